"""Triton kernels of genperf, installed as the package `genperf.kernels`. One file per op.

Set TRITON_INTERPRET=1 before importing triton to run them on CPU tensors (the tests do)."""
