"""The check behind README's first run: benchmarks/digit_check.py's classifier, which is not genperf's code, must
tell digits from what an undertrained generator draws (or the check could pass on noise)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import digit_check  # noqa: E402

pytestmark = pytest.mark.slow  # trains the classifier: 30 s on a 2-core CPU


@pytest.fixture(scope="module")
def classifier():
    return digit_check.train_classifier()


def test_the_classifier_is_sure_of_held_out_digits_and_of_no_non_digit(classifier):
    net, calibration = classifier
    assert calibration["accuracy"] > 0.95 and calibration["digits_confident"] > 0.8, calibration
    images, _ = digit_check.read_mnist()
    heldout = images[digit_check.TRAIN_IMAGES :][:64]
    assert digit_check.confident_fraction(net, heldout)[0] >= 0.5  # real digits pass the check
    generator = torch.Generator().manual_seed(123)
    for fakes in (
        digit_check.non_digits(heldout, generator),
        torch.rand(64, 1, 28, 28, generator=generator),  # uniform noise
        torch.zeros(64, 1, 28, 28),  # a blank grid
        (torch.rand(64, 1, 28, 28, generator=generator) < 0.05).float(),  # specks
    ):
        assert digit_check.confident_fraction(net, fakes)[0] < 0.1
