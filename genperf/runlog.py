"""The run directory: config.json, metrics.jsonl, samples/, loss.png, checkpoint.pt (or the sharded
checkpoint/ of --fsdp runs), summary.json."""
from __future__ import annotations

import json
import os
import shutil

import torch

CHECKPOINT = "checkpoint.pt"
SHARDED_CHECKPOINT = "checkpoint"  # a torch.distributed.checkpoint directory


def publish_dir(tmp, final):
    """Puts the finished directory `tmp` in place of `final`. Two renames: a crash between them leaves
    FINAL.old, which find_sharded_checkpoint falls back to."""
    old = f"{final}.old"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_sharded_checkpoint(out):
    """The complete sharded checkpoint in `out`, or None."""
    for path in (os.path.join(out, SHARDED_CHECKPOINT), os.path.join(out, f"{SHARDED_CHECKPOINT}.old")):
        if os.path.exists(os.path.join(path, "meta.pt")):
            return path
    return None


def atomic_save(obj, path):
    """torch.save through a temporary file and a rename, so a crash never leaves a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(text, path):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunLog:
    """Writes the run directory. Only the main rank writes; on other ranks every call is a no-op."""

    def __init__(self, out, enabled=True, resume_step=None):
        self.out, self.enabled = out, enabled
        self.metrics_path = os.path.join(out, "metrics.jsonl")
        if not enabled:
            return
        os.makedirs(os.path.join(out, "samples"), exist_ok=True)
        kept = []
        if resume_step is not None and os.path.exists(self.metrics_path):
            # Lines logged after the checkpoint we resume from are replaced by the resumed run.
            with open(self.metrics_path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= resume_step]
        atomic_write_text("".join(kept), self.metrics_path)

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def write_json(self, name, obj):
        if self.enabled:
            atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", self.path(name))

    def log(self, record):
        if self.enabled:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save_samples(self, samples, name, real=None):
        """An image grid (N, C, H, W in [0, 1]) or, for 2-D points, a scatter plot over `real`."""
        if not self.enabled:
            return None
        path = self.path("samples", f"{name}.png")
        if samples.dim() == 4:
            import torchvision

            torchvision.utils.save_image(samples.float().cpu(), path, nrow=8, padding=2)
        else:
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(5, 5))
            if real is not None:
                ax.scatter(*real.cpu().T, s=2, alpha=0.3, label="real")
            ax.scatter(*samples.float().cpu().T, s=2, alpha=0.6, label="generated")
            ax.set_aspect("equal")
            ax.legend(loc="upper right")
            ax.set_title(name)
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return path

    def plot_losses(self):
        """loss.png: each training metric against the step, held-out metrics as markers."""
        if not self.enabled or not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            records = [json.loads(line) for line in f]
        train = [r for r in records if r.get("split") == "train"]
        heldout = [r for r in records if r.get("split") == "heldout"]
        keys = [k for k in (train[0] if train else {}) if k not in ("step", "epoch", "split", "images_per_s", "mfu", "lr")]
        if not keys:
            return
        plt = pyplot()
        fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), squeeze=False, sharex=True)
        for ax, key in zip(axes[:, 0], keys):
            ax.plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r], label="train")
            held = [r for r in heldout if key in r]
            if held:
                ax.plot([r["step"] for r in held], [r[key] for r in held], "o-", label="held-out")
            ax.set_ylabel(key)
            ax.legend(loc="upper right")
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        fig.savefig(self.path("loss.png"), dpi=100)
        plt.close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
