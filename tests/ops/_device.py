"""Where the backend tests run: GENPERF_TEST_DEVICE (default cpu); benchmarks/selftest.py sets it to the GPU."""

import os

import torch

from genperf.ops import available_backends

DEVICE = torch.device(os.environ.get("GENPERF_TEST_DEVICE", "cpu"))
# The fused backends that take tensors on DEVICE: the native one (cpu or cuda) and Triton (a GPU, or
# the CPU through its interpreter).
NATIVE = "cuda" if DEVICE.type == "cuda" else "cpu"
BACKENDS = [b for b in available_backends() if b in (NATIVE, "triton")]
HAS_NATIVE = NATIVE in BACKENDS
