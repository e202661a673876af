"""python benchmarks/digit_check.py RUN_DIR: do a run's samples look like digits to a classifier that is not genperf's?

Trains a small convolutional classifier (two conv layers, two linear) from scratch on the MNIST images that ship in
tests/data/mnist (the first 9,000 of the test split; the last 1,000 measure its accuracy), read straight from the
IDX files and shrunk to the run's image size if it trained on smaller digits (`--image-size 14`), then classifies
64 samples of the run: the grid its last epoch wrote (same seed, same latents), at the temperature the run drew it
with unless --temperature says otherwise. A sample counts as a recognizable digit when the classifier gives one
class probability >= 0.9. Exits 0 when at least --pass-fraction of the samples do, 1 when not. Takes 15-40 s on a
2-core CPU, most of it training the classifier.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "tests", "data", "mnist")
TRAIN_IMAGES = 9000  # genperf trains on these when only the test split is present; the rest are held out
CONFIDENT = 0.9
# The held-out accuracy the classifier trains to: what three epochs reach at 28x28. Smaller digits carry less per
# image and take more epochs to get there; trained to the same accuracy, the classifier is confident about the same
# share of real digits at 14x14 as at 28x28 (about 90%), so both sizes face the same judge.
TARGET_ACCURACY = 0.965


def read_mnist(root=MNIST, size=28):
    """(images float (N, 1, size, size) in [0, 1], labels int64 (N,)) from the gzipped IDX files of the test split;
    a size below 28 shrinks them as `--image-size` does, with genperf's loader's own resize."""
    with gzip.open(os.path.join(root, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(root, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    from genperf.data import _resize  # the loader's own shrinking, so the classifier sees what the run trained on

    images = _resize(torch.from_numpy(images.copy()), size)
    return images.float() / 255, torch.from_numpy(labels.astype(np.int64))


NOT_A_DIGIT = 10  # the classifier's eleventh class


class DigitClassifier(nn.Module):
    def __init__(self, size=28):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (size // 4) ** 2, 128)
        self.fc2 = nn.Linear(128, NOT_A_DIGIT + 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def non_digits(digits, generator):
    """Images with a digit's ink but no digit's shape: each digit's pixels shuffled, and blobs (blurred noise cut at
    the digit's ink fraction); and flat images, one gray level each (every other one black or white). Trained as an
    eleventh class, they keep a classifier of ten classes from being sure about strokes and specks, which is what an
    undertrained generator draws, or about a saturated image (one all white was an 8 to it)."""
    n = len(digits)
    flat = digits.flatten(1)
    shuffled = flat.gather(1, torch.rand(flat.shape, generator=generator).argsort(1)).view_as(digits)
    noise = torch.rand(digits.shape, generator=generator)
    for _ in range(torch.randint(1, 4, (), generator=generator)):  # blobs of a few sizes
        noise = F.avg_pool2d(noise, 3, 1, 1)
    ink = (flat > 0.5).float().mean(1, keepdim=True)
    ranked = noise.flatten(1).sort(1).values
    cut = ranked.gather(1, ((1 - ink) * (ranked.shape[1] - 1)).long())
    blobs = (noise >= cut.view(n, 1, 1, 1)).float()
    levels = torch.rand(max(1, n // 4), 1, 1, 1, generator=generator)
    levels[::2] = levels[::2].round()
    grays = levels.expand(-1, *digits.shape[1:])
    return torch.cat([shuffled, blobs, grays])


def train_classifier(seed=0, size=28, target=TARGET_ACCURACY, max_epochs=10):
    """The classifier of size x size digits, trained epoch by epoch until it classifies `target` of the 1,000
    held-out digits correctly, and its calibration: that accuracy, the fraction of held-out digits it is confident
    about, the fraction of held-out non-digits it takes for a digit with confidence, and the epochs it took."""
    images, labels = read_mnist(size=size)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitClassifier(size)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    train_x, train_y = images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES]
    heldout_x, heldout_y = images[TRAIN_IMAGES:], labels[TRAIN_IMAGES:]
    epochs = 0
    while epochs < max_epochs:
        epochs += 1
        for idx in torch.randperm(TRAIN_IMAGES, generator=generator).split(64):
            fakes = non_digits(train_x[idx[:16]], generator)
            x = torch.cat([train_x[idx], fakes])
            y = torch.cat([train_y[idx], torch.full((len(fakes),), NOT_A_DIGIT)])
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracy = (net(heldout_x)[:, :NOT_A_DIGIT].argmax(1) == heldout_y).float().mean().item()
        if accuracy >= target:
            break
    calibration = dict(
        accuracy=accuracy,
        digits_confident=confident_fraction(net, heldout_x)[0],
        non_digits_confident=confident_fraction(net, non_digits(heldout_x, generator))[0],
        epochs=epochs,
    )
    return net, calibration


@torch.no_grad()
def confident_fraction(net, images):
    """(fraction of images given one digit class probability >= CONFIDENT, count of such images per class)."""
    probs = F.softmax(net(images.float()), dim=1)[:, :NOT_A_DIGIT]
    top, cls = probs.max(1)
    confident = top >= CONFIDENT
    return confident.float().mean().item(), torch.bincount(cls[confident], minlength=NOT_A_DIGIT).tolist()


def run_samples(run_dir, n=64, temperature=None):
    """n samples of the run as its last grid drew them (its seed's latents), and the temperature used."""
    from genperf.run import load_run

    run = load_run(run_dir, "cpu")
    t = temperature if temperature is not None else run.config.sample_temperature or 1.0  # None: models without one
    return run.sample(n, seed=run.config.seed, temperature=t).cpu(), t, run.step


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/digit_check.py", description=__doc__.split("\n")[0])
    p.add_argument("run", metavar="RUN_DIR", help="a run folder of a model trained on MNIST")
    p.add_argument("--temperature", type=float, help="latent temperature (default: the run's grid temperature)")
    p.add_argument("--pass-fraction", type=float, default=0.5, help="fraction that must be confident (default 0.5)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    samples, t, step = run_samples(args.run, temperature=args.temperature)
    channels, height, width = samples.shape[1:]
    if channels != 1 or height != width or not 8 <= height <= 28:  # before the classifier's seconds of training
        print(
            f"digit_check: {args.run} makes images of shape {tuple(samples.shape[1:])}, not MNIST's (1, 28, 28) "
            f"or a smaller square"
        )
        return 2
    net, calibration = train_classifier(size=height)
    fraction, per_class = confident_fraction(net, samples)
    verdict = "PASS" if fraction >= args.pass_fraction else "FAIL"
    print(
        f"digit_check: {verdict}: {round(fraction * len(samples))} of {len(samples)} samples of {args.run} (step "
        f"{step}, T={t:g}) are digits with p >= {CONFIDENT} ({fraction:.0%}; needed {args.pass_fraction:.0%}); per "
        f"class {per_class}. The classifier ({height}x{height}, {calibration['epochs']} epochs): "
        f"{calibration['accuracy']:.1%} accurate on 1,000 held-out digits, "
        f"confident about {calibration['digits_confident']:.0%} of them and "
        f"{calibration['non_digits_confident']:.0%} of 2,000 non-digits; {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
