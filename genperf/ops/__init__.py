"""Fused ops of genperf. Each op lives in one file with its pure-torch reference (`*_ref`), its
torch.library registration and its autograd; genperf.ops.backends picks the implementation."""

from genperf.ops.backends import available_backends, use_backend
from genperf.ops.coupling import affine_coupling, affine_coupling_ref
from genperf.ops.gradient_penalty import gradient_penalty, gradient_penalty_ref

__all__ = [
    "affine_coupling",
    "affine_coupling_ref",
    "gradient_penalty",
    "gradient_penalty_ref",
    "available_backends",
    "use_backend",
]
