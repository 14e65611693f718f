"""Test-wide setup.

The tight tolerance tiers (kernel vs numpy reference, compressed graph vs its decoded dense twin)
compare exact arithmetic, so this process runs the exact float lookup tables. The default uint8
tables of the fast-scan path are tested in subprocesses with the variable unset: against scalar in
test_kernel_simd.py and against the twin, with their own error budget, in test_pass.py. The kernel
reads the variable once per process, so it is set here, before any session exists.
"""
import os

os.environ["ONNXVQ_EXACT_LUT"] = "1"
