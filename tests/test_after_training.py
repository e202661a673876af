"""After training: genperf.load, python -m genperf.sample / evaluate on runs of every model (single
process and a 2-rank FSDP run), resume by folder alone, EMA, TensorBoard, and bad run folders."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import genperf
from genperf import evaluate, sample, train
from genperf.families.gan import GANObjective
from tests.test_train import SMALL, _lines

MODELS = list(SMALL)


def _train(model, out, *extra, data=("--data", "digits", "--image-size", "16")):
    argv = [model, *data, "--batch-size", "32", "--out", str(out), "--log-every", "5", *SMALL[model], *extra]
    assert train.main(argv) == 0


def _fsdp(out, *extra):
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
        "--steps",
        "10",
        "--st-norm",  # batch norm's statistics are each rank's own: only without it do 1 and 2 ranks agree
        "none",
        "--out",
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for model in MODELS:
        _train(model, root / model, "--steps", "10")
    _train("dcgan", root / "dcgan-ring8", "--steps", "10", data=("--data", "ring8"))
    return root


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    """RealNVP trained in one process and as two FSDP ranks (started as genperf.train starts them)."""
    root = tmp_path_factory.mktemp("sharded")
    _fsdp(root / "realnvp-one")
    _fsdp(root / "realnvp-fsdp2", "--fsdp", "--nproc", "2")
    return root


def _one_error_line(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"genperf.{command}: error:") and "\n" not in err, err
    return err


@pytest.mark.parametrize("model", MODELS)
def test_sample_writes_a_grid_and_single_images_the_same_for_a_seed(model, runs, tmp_path):
    run = runs / model
    assert sample.main([str(run), "--n", "6", "--grid", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (3 * 18 + 2, 2 * 18 + 2)  # 3 per row, 16 px + 2 px gaps
    assert sample.main([str(run), "--n", "5", "--out", str(tmp_path / "single"), "--temperature", "0.7"]) == 0
    assert sorted(os.listdir(tmp_path / "single")) == [f"{i:06d}.png" for i in range(5)]
    loaded = genperf.load(str(run))
    assert all(not m.training for m in loaded.models.values())
    a, b, c = loaded.sample(4, seed=1), loaded.sample(4, seed=1), loaded.sample(4, seed=2)
    assert a.shape == (4, 1, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample.main([str(run), "--interpolate", "--n", "2", "--steps", "4", "--out", str(tmp_path / "interp")]) == 0
    assert len(os.listdir(tmp_path / "interp")) == 8


def test_interpolation_ends_at_its_two_latents(runs):
    loaded = genperf.load(str(runs / "vae"))
    z = sample.interpolation_latents(loaded, rows=3, steps=5, seed=4)
    ends = loaded.latents(6, seed=4)
    torch.testing.assert_close(z[0::5], ends[0::2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z[4::5], ends[1::2], rtol=1e-4, atol=1e-5)
    # slerp keeps the norm between the ends' (not shrunk toward 0 as a straight line would be)
    assert z[2::5].norm(dim=1).min() > 0.9 * ends.norm(dim=1).min()


def test_sample_of_a_2d_run_writes_points(runs, tmp_path):
    assert sample.main([str(runs / "dcgan-ring8"), "--n", "100", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "points.csv").read_text().splitlines()
    assert lines[0] == "x,y" and len(lines) == 101
    assert sample.main([str(runs / "dcgan-ring8"), "--grid", str(tmp_path / "points.png")]) == 0
    assert (tmp_path / "points.png").exists()


def _heldout(run):
    return [r for r in _lines(run / "metrics.jsonl") if r["split"] == "heldout"][-1]


@pytest.mark.parametrize("model", MODELS)
def test_evaluate_every_model_and_match_the_training_log(model, runs, tmp_path):
    run = runs / model
    out = tmp_path / "eval.json"
    assert (
        evaluate.main(
            [
                str(run),
                "--samples",
                "3",
                "--fid-samples",
                "100",
                "--json",
                str(out),
                "--classifier",
                str(tmp_path.parent / "classifier-digits-16.pt"),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["step"] == 10 and result["split"] == "heldout"
    assert result["classifier_fid"] > 0 and 0.5 < result["classifier_accuracy"] <= 1
    assert "inception_fid" in result["skipped"]
    if model == "realnvp":  # the same checkpoint and noise as the log's held-out line
        assert result["bits_per_dim_draw0"] == pytest.approx(_heldout(run)["bits_per_dim"], rel=1e-6)
        assert result["dequantization_draws"] == 3 and 0 < result["bits_per_dim_se"] < 0.5
    elif model in ("vae", "beta-vae"):
        assert result["elbo_draw0"] == pytest.approx(_heldout(run)["elbo"], rel=1e-6)
        assert result["nll"] < -result["elbo"] + 3 * result["elbo_se"]  # a tighter bound than the ELBO
    else:
        assert "bits_per_dim" not in result and "elbo" not in result


def test_evaluate_of_a_2d_run_reports_mode_coverage(runs, tmp_path):
    assert evaluate.main([str(runs / "dcgan-ring8"), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["modes"] == 8 and 0 <= result["modes_covered"] <= 8 and 0 <= result["high_quality"] <= 1
    assert "classifier_fid" not in result


def test_a_metric_that_does_not_apply_is_refused(runs, capsys):
    assert evaluate.main([str(runs / "dcgan"), "--metrics", "bits_per_dim"]) == 2
    assert "realnvp only" in _one_error_line(capsys, "evaluate")


# Two processes: 15 s. The fast tier loads a stored two-rank checkpoint in one process (tests/test_fixtures.py).
@pytest.mark.slow
def test_a_two_rank_sharded_checkpoint_loads_in_one_process(sharded_runs, tmp_path):
    """The 2-rank FSDP run follows the 1-rank one step for step (test_train), so gathering its shards
    must give the 1-rank weights; sample and evaluate read it like any other run."""
    assert (sharded_runs / "realnvp-fsdp2" / "checkpoint" / "meta.pt").exists()
    one, two = genperf.load(str(sharded_runs / "realnvp-one")), genperf.load(str(sharded_runs / "realnvp-fsdp2"))
    state_one, state_two = one.model.state_dict(), two.model.state_dict()
    assert set(state_one) == set(state_two)
    for key in state_one:
        torch.testing.assert_close(state_two[key], state_one[key], rtol=1e-4, atol=1e-5)
    assert sample.main([str(sharded_runs / "realnvp-fsdp2"), "--n", "4", "--grid", str(tmp_path / "g.png")]) == 0
    assert (
        evaluate.main(
            [
                str(sharded_runs / "realnvp-fsdp2"),
                "--samples",
                "1",
                "--metrics",
                "bits_per_dim",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    bpd = json.loads((tmp_path / "e.json").read_text())["bits_per_dim"]
    logged = _heldout(sharded_runs / "realnvp-fsdp2")["bits_per_dim"]
    assert bpd == pytest.approx(logged, rel=1e-3)  # other ranks' noise


def test_resume_with_only_the_folder_equals_an_uninterrupted_run_ema_included(tmp_path, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    options = ["--steps", "60", "--ckpt-every", "30", "--ema", "0.9", "--label-smoothing"]
    _train("dcgan", whole, *options)
    real_step = GANObjective.train_step

    def crash_at_35(self, x, step):
        if step == 35:
            raise RuntimeError("simulated crash")  # after the checkpoint of step 30
        return real_step(self, x, step)

    monkeypatch.setattr(GANObjective, "train_step", crash_at_35)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train("dcgan", parts, *options)
    monkeypatch.setattr(GANObjective, "train_step", real_step)
    assert torch.load(parts / "checkpoint.pt", weights_only=True)["step"] == 30
    assert train.main(["--resume", "--out", str(parts)]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(parts / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 60
    assert set(a["models"]) == {"generator", "discriminator", "generator_ema"}
    for name in a["models"]:
        for key, value in a["models"][name].items():
            assert torch.equal(value, b["models"][name][key]), f"{name}.{key}"
    raw, ema = a["models"]["generator"], a["models"]["generator_ema"]
    assert all(torch.equal(raw[k], ema[k]) for k in raw if "running" in k or "num_batches" in k)  # buffers copied
    assert not any(torch.equal(raw[k], ema[k]) for k in raw if k.endswith("weight"))  # weights averaged
    # samples come from the average
    loaded = genperf.load(str(parts))
    assert loaded.model is loaded.models["generator_ema"]


def test_resume_by_folder_refuses_options_that_change_the_run(tmp_path, capsys):
    _train("vae", tmp_path, "--steps", "2")
    assert train.main(["--resume", "--out", str(tmp_path), "--lr", "0.1", "--steps", "4"]) == 2
    assert "--lr 0.001 -> 0.1" in capsys.readouterr().err
    assert train.main(["--resume", "--out", str(tmp_path), "--steps", "4"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4


def test_resume_accepts_another_spelling_of_the_same_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["vae", "--data", "digits", "--data-root", "data"]
    assert train.main([*argv, "--steps", "2", "--out", "run"]) == 0
    assert (
        train.main(
            [
                "vae",
                "--data",
                "digits",
                "--data-root",
                "./data/",
                "--steps",
                "4",
                "--resume",
                "--out",
                str(tmp_path / "run") + "/",
            ]
        )
        == 0
    )
    shutil.move(tmp_path / "run", tmp_path / "moved")  # a run folder resumes wherever it now is
    assert train.main(["--resume", "--out", "moved", "--steps", "6"]) == 0
    assert json.loads((tmp_path / "moved" / "summary.json").read_text())["steps"] == 6


def test_tensorboard_holds_the_logged_scalars_and_sample_grids(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional dependency (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train("realnvp", tmp_path, "--steps", "10", "--eval-every", "5", "--tensorboard")
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    logged = _lines(tmp_path / "metrics.jsonl")
    for split in ("train", "heldout"):
        want = [(r["step"], r["bits_per_dim"]) for r in logged if r["split"] == split]
        got = [(e.step, e.value) for e in events.Scalars(f"{split}/bits_per_dim")]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert all(math.isclose(g, w, rel_tol=1e-6) for (_, g), (_, w) in zip(got, want))
    assert [e.step for e in events.Images("samples")] == [10]


def test_tensorboard_missing_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    assert train.main(["vae", "--data", "digits", "--steps", "1", "--tensorboard", "--out", str(tmp_path)]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_bad_run_folders_give_one_line_and_exit_2(command, runs, tmp_path, capsys):
    main = {"sample": sample.main, "evaluate": evaluate.main}[command]
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no run" in _one_error_line(capsys, command)
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such run folder" in _one_error_line(capsys, command)
    assert main([str(runs / "dcgan"), "--checkpoint", str(runs / "vae" / "checkpoint.pt")]) == 2
    assert "another model" in _one_error_line(capsys, command)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(runs / "vae", corrupt)
    data = (corrupt / "checkpoint.pt").read_bytes()
    (corrupt / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    assert main([str(corrupt)]) == 2
    assert "not a readable checkpoint" in _one_error_line(capsys, command)


def test_resume_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert train.main(["--resume", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genperf: error:") and "nothing to resume" in err and "\n" not in err


def test_the_last_step_is_evaluated_once(tmp_path):
    """--eval-every landing on the last step measures the held-out set there once, not again for the final
    artifacts (a 1,000-image evaluation costs as much as several steps)."""
    _train("realnvp", tmp_path, "--steps", "10", "--eval-every", "5")
    held = [r["step"] for r in _lines(tmp_path / "metrics.jsonl") if r["split"] == "heldout"]
    assert held == [5, 10]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["heldout"] == next(
        {k: v for k, v in r.items() if k not in ("step", "epoch", "split")}
        for r in _lines(tmp_path / "metrics.jsonl")
        if r["split"] == "heldout" and r["step"] == 10
    )
