"""Run folders written by an earlier genperf (tests/fixtures/, made by commit dcf71ba: a single-process VAE and a
2-rank FSDP RealNVP on digits, 4 steps each) still load and resume: checkpoints outlive refactors."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import genperf
from genperf import train

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.mark.parametrize("name", ["vae-single", "realnvp-fsdp2"])
def test_an_earlier_run_folder_loads_and_samples(name):
    run = genperf.load(os.path.join(FIXTURES, name))
    assert run.step == 4
    images = run.sample(4, seed=0)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


def test_an_earlier_single_process_run_resumes(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(os.path.join(FIXTURES, "vae-single"), out)
    assert train.main(["--resume", "--out", str(out), "--steps", "6"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 6


@pytest.mark.slow  # two ranks; the one-rank resume stays in the fast tier
def test_an_earlier_sharded_run_resumes_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(os.path.join(FIXTURES, "realnvp-fsdp2"), out)
    proc = subprocess.run(
        [sys.executable, "-m", "genperf.train", "--resume", "--out", str(out), "--steps", "6"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert genperf.load(str(out)).step == 6
