"""genperf.plan: the memory table, counted on the meta device."""

import pytest

from genperf import plan

TINY = ["realnvp", "--data", "digits", "--image-size", "16", "--mid-channels", "8", "--num-blocks", "1"]


def test_gpus_parse_and_reject():
    assert plan.parse_gpus("2x11GiB") == (2, 11 * 2**30)
    assert plan.parse_gpus("8x80GB") == (8, 80e9)
    for bad in ("11GiB", "0x11GiB", "2x", "2x11TB"):
        with pytest.raises(plan.argparse.ArgumentTypeError, match="COUNTxSIZE"):
            plan.parse_gpus(bad)


@pytest.fixture(scope="module")
def tiny_rows():
    """Every mode of the tiny flow, counted once for the tests below (each mode steps twice on the meta device)."""
    wanted = (
        "fp32",
        "--checkpointing coupling",
        "--checkpointing block",
        "--invertible",
        "--amp --fsdp",
        "--amp --checkpointing block --invertible",
    )
    return plan.plan(TINY, 2, 11 * 2**30, 2**30, 0.05, modes={m: plan.MODES[m] for m in wanted})


@pytest.mark.slow  # the tiny flow counted in six modes: 40 s
def test_modes_order_as_their_memory_does(tiny_rows):
    rows = {r["mode"]: r for r in tiny_rows}
    fp32 = rows["fp32"]
    assert fp32["per_sample"] > 0 and fp32["fixed"] > 0
    # Recomputation keeps fewer activations; the coupling keeps only its input, a block its blocks' inputs.
    assert rows["--checkpointing coupling"]["per_sample"] < rows["--checkpointing block"]["per_sample"]
    assert rows["--checkpointing block"]["per_sample"] < fp32["per_sample"]
    assert rows["--invertible"]["per_sample"] < fp32["per_sample"]
    assert rows["--amp --fsdp"]["fixed"] < fp32["fixed"]  # sharded state over 2 GPUs
    assert all(r["per_gpu"] > 0 for r in rows.values())
    assert rows["--amp --checkpointing block --invertible"]["per_gpu"] > fp32["per_gpu"]


@pytest.mark.slow  # shares the six modes
def test_the_table_and_a_bad_option(capsys, monkeypatch, tiny_rows):
    real_plan = plan.plan
    monkeypatch.setattr(plan, "plan", lambda argv, *a, **k: tiny_rows if argv == TINY else real_plan(argv, *a, **k))
    assert plan.main([*TINY, "--gpus", "2x11GiB"]) == 0
    out = capsys.readouterr().out
    assert "--checkpointing coupling" in out and "batch/GPU" in out
    assert plan.main(["vae", "--data", "digits", "--gpus", "1x1GiB"]) == 0
    assert "--invertible" not in capsys.readouterr().out  # RealNVP's modes only for RealNVP
    with pytest.raises(SystemExit):
        plan.main([*TINY, "--gpus", "lots"])
    assert "COUNTxSIZE" in capsys.readouterr().err


@pytest.mark.slow  # counts the 88M-parameter celeba64 flow: 20 s
def test_the_prediction_follows_the_peak_measured_on_a_gpu():
    """RealNVP celeba64 with the study's network, fp32, against torch.cuda.max_memory_allocated on one H200
    (benchmarks/bench_memory.py, docs/gpu.md: 1.31 GiB fixed, 277 MiB a sample)."""
    argv = ["realnvp", "--data", "celeba", "--arch", "celeba64"]
    (row,) = plan.plan(argv, 1, 11 * 2**30, 2**30, 0.05, modes={"fp32": []})
    assert abs(row["per_sample"] / 2**20 - 277) < 0.1 * 277, row
    assert abs(row["fixed"] / 2**30 - 1.31) < 0.1 * 1.31, row
