"""The check behind README's first run: benchmarks/digit_check.py's classifier, which is not genperf's code, must
tell digits from what an undertrained generator draws (or the check could pass on noise)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import digit_check  # noqa: E402

pytestmark = pytest.mark.slow  # trains classifiers (15-40 s each) and a short run (2.5 min) on a 2-core CPU


@pytest.mark.parametrize("size", [28, 14])  # MNIST's own size and README's first run's
def test_the_classifier_is_sure_of_held_out_digits_and_of_no_non_digit(size):
    net, calibration = digit_check.train_classifier(size=size)
    assert calibration["accuracy"] >= digit_check.TARGET_ACCURACY and calibration["digits_confident"] > 0.8, calibration
    images, _ = digit_check.read_mnist(size=size)
    heldout = images[digit_check.TRAIN_IMAGES :][:64]
    assert digit_check.confident_fraction(net, heldout)[0] >= 0.5  # real digits pass the check
    generator = torch.Generator().manual_seed(123)
    for fakes in (
        digit_check.non_digits(heldout, generator),
        torch.rand(64, 1, size, size, generator=generator),  # uniform noise
        torch.zeros(64, 1, size, size),  # a blank grid
        torch.ones(64, 1, size, size),  # a white one (a diverged flow's), once taken for an 8
        torch.rand(64, 1, 1, 1, generator=generator).expand(64, 1, size, size),  # flat gray levels
        (torch.rand(64, 1, size, size, generator=generator) < 0.05).float(),  # specks
    ):
        assert digit_check.confident_fraction(net, fakes)[0] < 0.1


SHORT_STEPS = 400  # of README's 1,000
SHORT_PASS = 0.04  # 7.8% measured on a 2-core Xeon (5 of 64; 16% before flat images were non-digits); noise: 0%


def test_a_shorter_first_run_draws_digits_the_classifier_is_sure_of(tmp_path):
    """README's first command, cut to SHORT_STEPS steps, judged as benchmarks/first_run.py judges the full one: its
    samples at the run's grid temperature must hold digits the classifier is sure of (noise, blank grids and
    strokes give none)."""
    import shlex
    import subprocess

    from first_run import REPO, first_command

    argv = shlex.split(first_command())
    argv[argv.index("--steps") + 1] = str(SHORT_STEPS)
    out = str(tmp_path / "run")
    subprocess.run([sys.executable, *argv[1:], "--out", out], cwd=REPO, check=True, capture_output=True, timeout=900)
    samples, temperature, step = digit_check.run_samples(out)
    net, _ = digit_check.train_classifier(size=samples.shape[-1])
    fraction, per_class = digit_check.confident_fraction(net, samples)
    assert step == SHORT_STEPS and fraction >= SHORT_PASS, (fraction, per_class, temperature)
