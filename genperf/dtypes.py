import torch


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in fp32 when it is bf16/fp16/fp32; float64 stays float64 (so exact float64 checks stay exact)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
