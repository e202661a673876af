"""The CLI end to end: every model, resume, bad input, NaN, FSDP on CPU."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from genperf import precision, train
from genperf.families.flow import FlowObjective
from genperf.ops import available_backends

SMALL = {  # per model: options that keep a CPU smoke run to a few seconds
    # a constant rate: these runs are shorter than the default's 100-step warm-up, and some resume with a longer
    # --steps, which reshapes a cosine (tests/test_schedule.py covers the schedule and its resume)
    "realnvp": ["--mid-channels", "8", "--num-blocks", "1", "--lr", "1e-3", "--warmup", "0", "--lr-schedule=constant"],
    "dcgan": ["--latent-dim", "10"],
    "wgan-gp": ["--latent-dim", "10", "--critic-iters", "2"],
    "wgan": ["--latent-dim", "10", "--critic-iters", "2"],
    "vae": [],
    "beta-vae": ["--beta", "10"],
}


def _run(model, out, *extra):
    argv = [
        model,
        "--data",
        "digits",
        "--image-size",
        "16",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--log-every",
        "2",
        *SMALL[model],
        *extra,
    ]
    return train.main(argv)


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("model", list(SMALL))
def test_every_model_trains_and_writes_its_run_directory(model, tmp_path):
    assert _run(model, tmp_path, "--steps", "6") == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "loss.png"):
        assert (tmp_path / name).exists(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert not {"channels", "loader", "workers"} & set(config)  # options that do not apply to digits
    assert ("gp_weight" in config) == (model == "wgan-gp") and ("beta" in config) == (model in ("vae", "beta-vae"))
    assert ("critic_iters" in config) == (model in ("wgan-gp", "wgan")) and config["seed"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["samples"] == ["step_000006.png"]
    assert all(math.isfinite(v) for v in summary["train"].values())
    if model == "realnvp":
        assert 0 < summary["heldout"]["bits_per_dim"] < 12
    if model in ("vae", "beta-vae"):
        assert summary["heldout"]["elbo"] < 0
    records = _lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6]
    assert all(r["images_per_s"] > 0 and 0 < r["mfu"] < 1 for r in records if r["split"] == "train")
    assert summary["flops_per_image"] > 0 and summary["peak_flops"] > 0


def test_amp_on_a_cpu_without_bf16_kernels_trains_in_fp32_and_says_so(tmp_path, monkeypatch, capsys):
    """There bf16 autocast runs 15-90x slower than fp32 (measured on an AVX2 EPYC): --amp is a reported fp32 run,
    and GENPERF_CPU_BF16=1 insists on bf16."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    with precision.Precision("cpu", True).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert _run("vae", tmp_path / "fp32", "--steps", "2", "--amp") == 0
    assert "--amp: this CPU has no bf16 kernels" in capsys.readouterr().out
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert config["amp"] is True and config["autocast_dtype"] is None and "fp32" in config["precision_note"]
    assert json.loads((tmp_path / "fp32" / "summary.json").read_text())["amp"] is None

    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    with precision.Precision("cpu", True).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert _run("vae", tmp_path / "forced", "--steps", "2", "--amp") == 0
    assert "no bf16 kernels" not in capsys.readouterr().out
    assert json.loads((tmp_path / "forced" / "config.json").read_text())["autocast_dtype"] == "torch.bfloat16"
    monkeypatch.delenv(precision.CPU_BF16_ENV)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.Precision("cpu", True).dtype == torch.bfloat16 and precision.Precision("cpu", True).note is None


def test_main_command_as_a_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "genperf.train", "vae", "--data", "digits", "--epochs", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    # 8 digits of 8x8 a row, each enlarged 4x (was 82 pixels wide), 2-pixel gaps
    assert Image.open(tmp_path / "samples" / "epoch_001.png").size == (8 * 32 + 9 * 2, 8 * 32 + 9 * 2)
    # The summary a run ends with: every file it names exists, and the next commands name this run.
    summary = proc.stdout[proc.stdout.index("genperf: done.") :].splitlines()
    assert summary[1].startswith("  held-out    elbo ") and "higher is better" in summary[1], summary
    for line, name in zip(summary[2:5], ("samples", "losses", "checkpoint")):
        assert line.split()[0] == name and os.path.exists(line.split()[1]), line
    assert "(temperature 1)" in summary[2]
    assert f"python -m genperf.train --resume --out {tmp_path} --steps " in proc.stdout


@pytest.mark.parametrize(
    "model, extra",
    [("realnvp", ["--image-size", "8"]), ("dcgan", ["--label-smoothing"]), ("wgan", [])],
)  # realnvp at 8x8: 16x16 took 20 s of the fast tier
def test_resumed_run_ends_where_an_uninterrupted_one_does(model, extra, tmp_path):
    # 49 steps per epoch at batch 32: the stop at step 30 is mid-epoch, the end (60) in the next epoch.
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _run(model, whole, "--steps", "60", *extra) == 0
    assert _run(model, parts, "--steps", "30", *extra) == 0
    assert _run(model, parts, "--steps", "60", "--resume", *extra) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(parts / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 60
    for name in a["models"]:
        for key, value in a["models"][name].items():
            assert torch.equal(value, b["models"][name][key]), f"{name}.{key}"
    steps = [r["step"] for r in _lines(parts / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no duplicated lines after the resume


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_step = FlowObjective.train_step

    def diverging(self, x, step):
        out = real_step(self, x, step)
        return {k: v * float("nan") for k, v in out.items()} if step >= 6 else out

    monkeypatch.setattr(FlowObjective, "train_step", diverging)
    # Every step is checked, not only the logged ones: the run stops at the first bad step.
    assert _run("realnvp", tmp_path, "--steps", "20", "--ckpt-every", "4", "--log-every", "10") == 2
    assert "non-finite bits_per_dim at step 7; stopping. The last good checkpoint (step 4)" in capsys.readouterr().err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dcgan", "--data", "digits", "--image-size", "30"], "cannot take image size 30"),
        (["realnvp", "--data", "digits", "--arch", "mnist"], "pass --image-size 28"),
        (["realnvp", "--data", "digits", "--num-scales", "5"], "not divisible by 16"),
        (["beta-vae", "--data", "digits", "--beta", "1"], "needs --beta > 1"),
        (["vae", "--data", "ring8"], "needs image data"),
        (["vae", "--data", "cifar"], "unknown data set"),
        (["vae", "--data", "mnist", "--data-root", "/nonexistent", "--no-download"], "no IDX files"),
        (["dcgan", "--data", "digits", "--steps", "0"], "--steps must be >= 1 (got 0)"),  # was: the default schedule
        (["vae", "--data", "digits", "--epochs", "0"], "--epochs must be >= 1 (got 0)"),
        # refused before the workers start (was: one refusal per worker and a launcher error, exit 1)
        (["wgan-gp", "--data", "digits", "--fsdp"], "wgan-gp does not run under --fsdp: FSDP2 ends its backward"),
    ],
)
def test_bad_input_stops_with_one_clear_line(argv, message, tmp_path, capsys):
    assert train.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genperf: error:") and message in err and "\n" not in err


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    assert _run("vae", tmp_path, "--steps", "2") == 0
    assert _run("vae", tmp_path, "--steps", "2") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert _run("vae", tmp_path, "--steps", "4", "--resume", "--lr", "0.1") == 2
    assert "--lr 0.001 -> 0.1" in capsys.readouterr().err


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    assert _run("vae", tmp_path, "--steps", "4") == 0
    files = {name: (tmp_path / name).read_bytes() for name in ("metrics.jsonl", "summary.json", "checkpoint.pt")}
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(tmp_path)]) == 0  # was: a second held-out row, a new summary
    assert f"{tmp_path} has already finished its 4 steps; nothing to do" in capsys.readouterr().out
    assert train.main(["--resume", "--out", str(tmp_path), "--steps", "2"]) == 2
    assert "at step 4, beyond the 2 steps asked for; pass a larger --steps" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in files} == files


def test_help_says_what_a_step_is_and_the_default_epochs(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a WGAN's generator steps every --critic-iters" in text and "dcgan 5, wgan-gp 5" in text
    assert "--seed SEED seed of the initial weights" in text and "--device DEVICE cpu, cuda or cuda:N" in text


def test_unknown_model_is_an_argparse_error():
    with pytest.raises(SystemExit) as exit_:
        train.main(["gan3000"])
    assert exit_.value.code == 2


def _cli(*argv, out):
    """python -m genperf.train realnvp in a subprocess (--fsdp runs launch their own workers)."""
    cmd = [
        sys.executable,
        "-m",
        "genperf.train",
        "realnvp",
        "--data",
        "digits",
        "--batch-size",
        "32",
        "--mid-channels",
        "8",
        "--num-blocks",
        "1",
        "--out",
        str(out),
        *argv,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train_curve(out):
    return {r["step"]: r["bits_per_dim"] for r in _lines(out / "metrics.jsonl") if r["split"] == "train"}


@pytest.mark.slow
def test_fsdp_two_ranks_follow_one_rank_and_resume_onto_another_rank_count(tmp_path):
    """Same global batch: the 2-rank FSDP loss curve is the 1-rank one; a sharded checkpoint written by 2
    ranks resumes on 1 (switching on invertible backprop and checkpointing, which change no gradient). This holds
    for the normalisation-free s/t networks (--st-norm none): batch norm's statistics are each rank's own, as in
    the study's data-parallel training, so with it the ranks' numbers differ from one process's."""
    # A constant learning rate: genperf's cosine follows --steps, so the run started for 10 of the 20 steps would
    # train its first steps at other rates than the 20-step runs it is compared with.
    free = ("--st-norm", "none", "--lr", "1e-3", "--warmup", "0", "--lr-schedule", "constant")
    _cli(*free, "--steps", "20", "--log-every", "2", out=tmp_path / "one")
    _cli(*free, "--fsdp", "--nproc", "2", "--steps", "20", "--log-every", "2", out=tmp_path / "two")
    _cli(*free, "--fsdp", "--nproc", "2", "--steps", "10", "--log-every", "2", out=tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint" / "meta.pt").exists()
    proc = _cli(
        "--fsdp",
        "--nproc",
        "1",
        "--steps",
        "20",
        "--log-every",
        "2",
        "--resume",
        "--invertible",
        "--checkpointing",
        "block",
        out=tmp_path / "resumed",
    )
    assert "resuming at step 10" in proc.stdout
    one, two, resumed = (_train_curve(tmp_path / n) for n in ("one", "two", "resumed"))
    assert sorted(one) == sorted(two) == sorted(resumed) == list(range(2, 21, 2))
    assert one[20] < one[2] - 1.0  # it trains
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
        assert resumed[step] == pytest.approx(two[step], rel=1e-4), step


def _amp_fsdp_trains_and_resumes(out, *extra):
    proc = _cli("--amp", "--fsdp", "--nproc", "2", "--steps", "40", "--log-every", "5", *extra, out=out)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    bpd = list(_train_curve(out).values())
    assert bpd[-1] < bpd[0] - 0.5, bpd  # the sharded parameters really are being optimised
    resumed = _cli("--amp", "--fsdp", "--nproc", "2", "--steps", "50", "--resume", out=out)
    assert "resuming at step 40" in resumed.stdout
    assert json.loads((out / "summary.json").read_text())["steps"] == 50
    return proc


@pytest.mark.slow
def test_main_command_shape_amp_fsdp_trains_and_resumes(tmp_path):
    _amp_fsdp_trains_and_resumes(tmp_path)


@pytest.mark.slow
def test_amp_fsdp_under_compile_trains_and_resumes_without(tmp_path):
    """--compile under FSDP2, whose hooks break the graph per unit (each rank compiles: minutes here)."""
    assert "genperf: torch.compile compiled" in _amp_fsdp_trains_and_resumes(tmp_path, "--compile").stdout


# The Triton interpreter trains slowly (tests/ops checks its kernels against the reference in the fast tier).
@pytest.mark.parametrize(
    "backend",
    [
        b if b == "cpu" else pytest.param(b, marks=pytest.mark.slow)
        for b in available_backends()
        if b in ("cpu", "triton")
    ],
)
@pytest.mark.parametrize("model", ["realnvp", "wgan-gp"])
def test_fused_ops_train_like_the_reference(model, backend, tmp_path):
    """A short training with the fused coupling / penalty follows the pure-torch run step for step."""
    curves, params = {}, {}
    # RealNVP without batch norm: in the batch-normed network the biases before a batch norm have an exact gradient
    # of zero, so Adam steps them (and the running means after them) on rounding noise, which differs between runs.
    extra = ["--st-norm", "none"] if model == "realnvp" else []
    for b in ("reference", backend):
        assert _run(model, tmp_path / b, "--steps", "12", "--log-every", "1", "--backend", b, *extra) == 0
        curves[b] = [r for r in _lines(tmp_path / b / "metrics.jsonl") if r["split"] == "train"]
        params[b] = torch.load(tmp_path / b / "checkpoint.pt", weights_only=True)["models"]
    keys = [k for k in curves["reference"][0] if k.endswith("loss") or k == "bits_per_dim"]
    for ref, fused in zip(curves["reference"], curves[backend]):
        for k in keys:
            assert fused[k] == pytest.approx(ref[k], rel=1e-3, abs=1e-3), (ref["step"], k)
    # Adam moves a parameter whose gradient is at rounding level by up to lr (1e-3) a step in either run.
    for name, state in params["reference"].items():
        for key, value in state.items():
            torch.testing.assert_close(params[backend][name][key], value, rtol=1e-3, atol=1e-3)


def test_no_logged_mfu_exceeds_1_when_the_peak_measured_at_the_start_was_low(tmp_path, monkeypatch):
    """A peak measured while the machine was busy (here: a hundredth of the real one) made a CPU run log a median MFU
    of 1.34; the first MFU above 1 measures the peak again, longer, and keeps the larger."""
    from genperf import perf

    real = perf.peak_flops("cpu", torch.float32)
    monkeypatch.setattr(perf, "peak_flops", lambda device_type, dtype, **kwargs: real / 100)
    assert _run("dcgan", tmp_path, "--steps", "6") == 0
    mfus = [r["mfu"] for r in _lines(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert mfus and all(0 < m <= 1 for m in mfus) and 0 < summary["mfu"] <= 1 and summary["peak_flops"] > real / 2
