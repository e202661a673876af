import torch


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in fp32 when it is bf16/fp16/fp32; float64 stays float64 (so exact float64 checks stay exact)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def cpu_has_bf16():
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 and newer; AVX-512 BF16 and AMX compute bf16 in
    hardware). Without them bf16 matmuls and convolutions fall back to plain loops: 15-90x slower than fp32,
    measured on a 2-core AVX2 EPYC."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False
