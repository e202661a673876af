"""The learning-rate schedule (--warmup, --lr-schedule): each step trains at the rate the formula gives, and a
resumed run follows the same rates as an uninterrupted one."""

import math

import pytest
import torch

from genperf import config, train
from genperf.families.vae import VAEObjective
from genperf.schedule import lr_factor

REAL_STEP = VAEObjective.train_step
VAE = ["vae", "--data", "digits", "--batch-size", "32", "--log-every", "5", "--ckpt-every", "6", "--steps", "12"]


def test_the_factor_ramps_over_the_warmup_then_holds_or_follows_a_cosine_to_zero():
    assert [lr_factor(s, s / 10, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0.0, 0, "cosine") == 1.0
    assert lr_factor(5, 0.5, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 1.0, 0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(1, 0.25, 4, "cosine") == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_realnvp_defaults_to_its_measured_recipe_and_other_models_to_none():
    c = config.parse_args(["realnvp"])
    assert (c.lr, c.warmup, c.lr_schedule) == (5e-3, 100, "cosine")
    c = config.parse_args(["vae"])
    assert not c.warmup and c.lr_schedule in (None, "constant")


def _rates(monkeypatch, crash_at=None):
    """The learning rate each step of a VAE run trains at, by step; the run raises at step `crash_at`."""
    seen = {}

    def recording(self, x, step):
        if step == crash_at:
            raise RuntimeError("simulated crash")
        if x.device.type != "meta":  # not the step the run counts its FLOPs with
            seen[step] = self.optimizers["vae"].param_groups[0]["lr"]
        return REAL_STEP(self, x, step)

    monkeypatch.setattr(VAEObjective, "train_step", recording)
    return seen


def test_each_step_trains_at_its_scheduled_rate_and_a_resumed_run_at_the_same(tmp_path, monkeypatch):
    options = ["--lr", "1e-3", "--warmup", "4", "--lr-schedule", "cosine"]
    whole = _rates(monkeypatch)
    assert train.main([*VAE, *options, "--out", str(tmp_path / "whole")]) == 0
    expected = {s: 1e-3 * min(1, (s + 1) / 4) * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in range(12)}
    assert whole == pytest.approx(expected)
    _rates(monkeypatch, crash_at=8)  # after the checkpoint of step 6
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main([*VAE, *options, "--out", str(tmp_path / "parts")])
    resumed = _rates(monkeypatch)
    assert train.main(["--resume", "--out", str(tmp_path / "parts")]) == 0
    assert resumed == {s: whole[s] for s in range(6, 12)}  # from the step alone, no state the resume could lose
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["models"]["vae"]
    b = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)["models"]["vae"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)
