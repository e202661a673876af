"""Which backend runs each fused op fastest, per device type: written by `python benchmarks/bench_kernels.py
--rank` from the geometric mean over the RealNVP presets' and the critics' shapes of each provider's speed-up over
eager torch (forward + backward, batches and dtypes as measured); genperf.ops.backends picks from it. Rerun the
benchmark on a device to replace its entries."""

# device type -> op -> ((backend, speed-up over eager torch), ...), fastest first
RANKING = {
    "cpu": {
        "affine_coupling": (("cpu", 2.38), ("reference", 1.0)),
        "gradient_penalty": (("cpu", 2.38), ("reference", 1.0)),
    },
    "cuda": {
        "affine_coupling": (("cuda", 2.48), ("reference", 1.0), ("triton", 0.96)),
        "gradient_penalty": (("cuda", 1.02), ("reference", 1.0), ("triton", 0.64)),
    },
}
# device type -> where and when its entries were measured
SOURCE = {
    "cpu": "2-core Intel(R) Xeon(R) Processor, --amp runs bf16, 2026-12-06, commit 08e597d, batches 64, 256, float32, bfloat16",
    "cuda": "one NVIDIA H200, 2026-12-04, batch 256, bfloat16",
}
