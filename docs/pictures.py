"""The pictures of README.md, drawn from real training runs on data that ships with genperf: MNIST's test split in
tests/data/mnist (genperf trains on its first 9,000 images and holds out the last 1,000) and the ring8 mixture.

    python docs/pictures.py [--work runs/pictures] [--out docs/img]

Trains what it draws with genperf.fit into --work (a finished run there is reused, an interrupted one resumed),
then writes, each a PNG of well under 300 KB:
  samples.png        36 samples of RealNVP, the VAE, DCGAN and WGAN-GP
  ring8.png          DCGAN and WGAN-GP on the 8-Gaussian ring (the study's toy protocol), samples over the data
  beta-vae.png       held-out digits and their reconstructions at beta 1, 10 and 100
  interpolation.png  the VAE's spherical path between the latents of two held-out digits, three pairs
About 25 minutes on a 2-core CPU; the budgets are short of the study's (python -m genperf.study).
"""

import argparse
import os
import sys
import time

import torch

import genperf
from genperf.runlog import image_grid, pyplot
from genperf.sample import slerp
from genperf.study.experiments import MODE_COLLAPSE_MODELS, TOY_PROTOCOL
from genperf.study.report import show_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = dict(data="mnist", data_root=os.path.join(REPO, "tests", "data", "mnist"), download=False)
RUNS = {  # folder -> (model, options)
    "realnvp": (
        "realnvp",
        dict(MNIST, num_scales=2, mid_channels=32, num_blocks=4, batch_size=64, steps=700, amp=True, compile=True),
    ),
    "vae": ("vae", dict(MNIST, batch_size=128, epochs=30)),
    "dcgan": ("dcgan", dict(MNIST, batch_size=64, steps=3000)),
    "wgan-gp": ("wgan-gp", dict(MNIST, batch_size=64, steps=6000)),
    "beta-10": ("beta-vae", dict(MNIST, batch_size=128, epochs=30, beta=10)),
    "beta-100": ("beta-vae", dict(MNIST, batch_size=128, epochs=30, beta=100)),
    "ring8-dcgan": ("dcgan", dict(TOY_PROTOCOL, **MODE_COLLAPSE_MODELS["dcgan"], data="ring8", steps=3000)),
    "ring8-wgan-gp": ("wgan-gp", dict(TOY_PROTOCOL, **MODE_COLLAPSE_MODELS["wgan-gp"], data="ring8", steps=5000)),
}


def trained(work, name):
    """The run `name` of RUNS in `work`, trained (or resumed) to its budget, loaded."""
    model, options = RUNS[name]
    out = os.path.join(work, name)
    resume = os.path.exists(os.path.join(out, "config.json"))
    start = time.perf_counter()
    if resume:
        genperf.fit(resume=True, out=out)
    else:
        genperf.fit(model, out=out, **options)
    print(f"pictures: {name} trained in {time.perf_counter() - start:.0f} s", flush=True)
    return genperf.load(out)


def save(fig, path):
    fig.savefig(path, dpi=80, bbox_inches="tight")
    pyplot().close(fig)
    print(f"pictures: wrote {path} ({os.path.getsize(path) // 1024} KB)", flush=True)


def samples(work, out):
    names = {"realnvp": "RealNVP", "vae": "VAE", "dcgan": "DCGAN", "wgan-gp": "WGAN-GP"}
    fig, axes = pyplot().subplots(1, len(names), figsize=(2.6 * len(names), 2.9))
    for ax, (name, title) in zip(axes, names.items()):
        images = trained(work, name).sample(36, seed=0)
        ax.imshow(image_grid(images, 6, padding=1, pad_value=1.0).permute(1, 2, 0).numpy(), cmap="gray")
        ax.set_title(title)
        ax.set_axis_off()
    save(fig, os.path.join(out, "samples.png"))


def ring8(work, out):
    fig, axes = pyplot().subplots(1, 2, figsize=(7, 3.6))
    for ax, name in zip(axes, ("ring8-dcgan", "ring8-wgan-gp")):
        run = trained(work, name)
        real = run.data().heldout[:1000]
        fake = run.sample(1000, seed=0)
        ax.scatter(real[:, 0], real[:, 1], s=2, alpha=0.4, label="data")
        ax.scatter(fake[:, 0], fake[:, 1], s=2, alpha=0.4, label="generated")
        ax.set_title(RUNS[name][0].upper())
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(loc="upper right", fontsize=7, markerscale=4)
    save(fig, os.path.join(out, "ring8.png"))


def heldout_images(run, n):
    images = run.data().heldout[:n]
    return (images.float() / 255 if images.dtype == torch.uint8 else images.float()).to(run.device)


def beta_vae(work, out, n=10):
    rows, labels = [], []
    for name, beta in (("vae", 1), ("beta-10", 10), ("beta-100", 100)):
        run = trained(work, name)
        x = heldout_images(run, n)
        if not rows:
            rows.append(x.cpu())
            labels.append("held out")
        with torch.no_grad():
            mean, _ = run.model.encode(x)  # the posterior mean, decoded
            rows.append(run.objective.sample(mean).float().cpu())
        labels.append(f"beta {beta}")
    save(show_rows(rows, labels, "VAE reconstructions"), os.path.join(out, "beta-vae.png"))


def interpolation(work, out, pairs=3, steps=10):
    run = trained(work, "vae")
    t = torch.linspace(0, 1, steps)
    with torch.no_grad():
        mean, _ = run.model.encode(heldout_images(run, 2 * pairs))
        rows = [
            run.objective.sample(slerp(a.expand(steps, -1), b.expand(steps, -1), t)).float().cpu()
            for a, b in zip(mean[0::2, None], mean[1::2, None])
        ]
    save(show_rows(rows, [""] * pairs, "VAE latent interpolation"), os.path.join(out, "interpolation.png"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=os.path.join("runs", "pictures"), help="run folders (default runs/pictures)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "img"), help="where the PNGs go (default docs/img)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for draw in (samples, ring8, beta_vae, interpolation):
        draw(args.work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
