"""Test-wide setup.

The tight tolerance tiers (kernel vs numpy reference, compressed graph vs its decoded dense twin)
compare exact arithmetic, so this process runs the exact float lookup tables and float panels.
The defaults (uint8 tables of the fast-scan path, the panel GEMM's int8 tier) are tested in
subprocesses with the variables unset: against scalar in test_kernel_simd.py and against the
twin, with their own error budgets, in test_pass.py. The kernel reads the variables once per
process, so they are set here, before any session exists.
"""
import os

os.environ["ONNXVQ_EXACT_LUT"] = "1"
os.environ["ONNXVQ_EXACT_GEMM"] = "1"
