# aarch64 cross build and tests, the C++ runner, wheels (issue 5; docs/DEPLOY.md).
# Included by the Makefile, which defines $(INSTALLED) (the x86 venv) and $(PY).

.PHONY: test-aarch64 runner runner-bundles wheel wheel-aarch64

# The scripts use this venv's python (and its onnxruntime) for everything Python.
AARCH64_ENV := ONNXVQ_PY=$(abspath $(PY))

# Installs the cross compiler, qemu and the aarch64 onnxruntime if missing, cross-builds,
# and runs the kernel tests and the runner cases under qemu against x86 and the reference.
test-aarch64: $(INSTALLED)
	$(AARCH64_ENV) bash scripts/aarch64/test.sh

# The C++ runner for this machine: build/x86_64/runner/onnxvq_runner.
runner: $(INSTALLED)
	$(AARCH64_ENV) bash scripts/aarch64/build.sh x86_64

# dist/onnxvq-*-linux_x86_64.whl, then installed in a brand-new venv under /tmp and used
# there (compress + run a tiny model) away from the source tree.
wheel: $(INSTALLED)
	$(AARCH64_ENV) bash scripts/aarch64/wheel.sh build x86_64
	$(AARCH64_ENV) bash scripts/aarch64/wheel.sh check x86_64

# dist/onnxvq-*-linux_aarch64.whl, cross-built; its library is run under qemu.
wheel-aarch64: $(INSTALLED)
	$(AARCH64_ENV) bash scripts/aarch64/setup.sh
	$(AARCH64_ENV) bash scripts/aarch64/wheel.sh build aarch64
	$(AARCH64_ENV) bash scripts/aarch64/wheel.sh check aarch64

# build/bundle/onnxvq-runner-linux-{x86_64,aarch64}.tar.gz: runner + onnxruntime + op library.
runner-bundles: $(INSTALLED)
	$(AARCH64_ENV) bash scripts/aarch64/setup.sh
	$(AARCH64_ENV) bash scripts/aarch64/build.sh bundle
