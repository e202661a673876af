"""genperf.perf (FLOPs of a step, measured peak) and benchmarks/bench_train.py end to end."""

import csv
import importlib.util
import math
import os

import pytest
import torch

from genperf import config, perf, trainer
from genperf.data import load_dataset
from genperf.dtypes import cpu_has_bf16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_flops_of_a_linear_layer_forward_and_backward():
    layer = torch.nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8, requires_grad=True)
    # forward x @ W^T, backward dx = g @ W and dW = g^T @ x: three (4 x 8 x 16) products of 2 FLOPs a term
    assert perf.step_flops(lambda i: layer(x).sum().backward(), steps=2) == 3 * 2 * 4 * 8 * 16


def test_the_gradient_penalty_double_backward_is_counted():
    """WGAN-GP and WGAN train the same networks; WGAN-GP's critic steps add the penalty (one more critic
    forward, its input gradient, and the backward through both), so it must count more FLOPs."""
    data = load_dataset("digits", image_size=16, download=False)
    flops = {}
    for model in ("wgan", "wgan-gp"):
        args = config.parse_args([model, "--data", "digits", "--image-size", "16", "--latent-dim", "10"])
        flops[model] = trainer.step_cost(args, data, 2).flops_per_image
    assert flops["wgan-gp"] > 1.3 * flops["wgan"] > 0


def test_peak_flops_is_measured_per_dtype():
    fp32 = perf.peak_flops("cpu", torch.float32, size=256, seconds=0.05)
    assert math.isfinite(fp32) and fp32 > 1e8
    assert perf.peak_flops("cpu", torch.float32, size=256, seconds=0.05) == fp32  # cached


def test_the_bf16_peak_of_a_cpu_without_bf16_kernels_is_its_fp32_peak(monkeypatch):
    """Such a CPU does bf16 work in fp32 units; its fallback bf16 matmul (about 1 GFLOP/s on an AVX2 EPYC) is no
    peak: a bf16 DCGAN step outran it, for an MFU of 1350%."""
    timed = []
    monkeypatch.setattr(perf, "_best_seconds", lambda fn, device, seconds: timed.append(fn().dtype) or 1.0)
    for has_bf16 in (False, True):
        monkeypatch.setattr(perf, "cpu_has_bf16", lambda: has_bf16)
        perf.peak_flops.__wrapped__("cpu", torch.bfloat16, size=8)
    assert timed == [torch.float32, torch.bfloat16]


def test_bench_train_runs_and_appends_its_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_train", os.path.join(REPO, "benchmarks", "bench_train.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "train.csv"
    limit = torch._dynamo.config.recompile_limit
    with torch._dynamo.config.patch(recompile_limit=limit):  # bench_train raises it for its process: restored here
        argv = ["--models", "dcgan-28", "--variants", "baseline", "fused", "+amp", "--rounds", "1", "--csv", str(out)]
        assert bench.main([*argv, "--batches", "8", "16", "--profile", str(tmp_path / "profiles")]) == 0
    assert torch._dynamo.config.recompile_limit == limit
    rows = list(csv.DictReader(out.open()))
    assert [(r["batch"], r["variant"]) for r in rows] == [
        (b, v) for b in ("8", "16") for v in ("baseline", "fused", "+amp")
    ]
    tables = sorted(p.name for p in (tmp_path / "profiles").iterdir())
    assert tables == ["profile-dcgan-28-amp.txt", "profile-dcgan-28-baseline.txt", "profile-dcgan-28-fused.txt"]
    assert "convolutions" in (tmp_path / "profiles" / tables[0]).read_text()
    assert float(rows[0]["speedup"]) == pytest.approx(1.0)
    assert all(float(r["images_per_s"]) > 0 and 0 < float(r["mfu"]) < 1 for r in rows)
    # --amp is bf16 autocast, except on a CPU without bf16 kernels, where it trains (and is measured) in fp32
    assert rows[2]["dtype"] == ("bfloat16" if cpu_has_bf16() else "float32") and rows[0]["dtype"] == "float32"


def test_measuring_the_peak_leaves_the_random_stream_alone():
    """The peak is measured once per process: drawing its operands from the global stream would make a
    run's numbers depend on whether an earlier run in the process had measured it already."""
    state = torch.get_rng_state()
    perf.peak_flops.__wrapped__("cpu", torch.float32, size=64, seconds=0.01)
    assert torch.equal(torch.get_rng_state(), state)


def test_machine_names_the_cpu_its_kind_and_what_amp_computes_in():
    with open("/proc/cpuinfo") as f:
        lines = f.readlines()
    model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    flags = next(line for line in lines if line.startswith("flags")).split()
    kind = "AMX" if "amx_tile" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "AVX2"
    text = perf.machine("cpu")
    assert text.startswith(f"{os.cpu_count()}-core {model} ({kind}), "), text
    assert text.endswith("--amp runs bf16" if cpu_has_bf16() else "--amp runs fp32 (no fast bf16)")
