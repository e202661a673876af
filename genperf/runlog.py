"""The run directory's logs: config.json, metrics.jsonl (the source of truth), samples/, loss.png,
summary.json and, with --tensorboard, a TensorBoard event file. Checkpoints: genperf.checkpoint."""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import sys
import time

from genperf.errors import GenperfError


@contextlib.contextmanager
def writing(path):
    """A failed write (a full disk, a read-only folder) as one line naming the file."""
    try:
        yield
    except OSError as e:
        raise GenperfError(f"could not write {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` to write; it becomes `path` when the block ends, and is removed
    when it fails (a full disk leaves neither a partial file nor an empty one); failures are one line."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise


def atomic_write_text(text, path):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def read_metrics(path):
    """metrics.jsonl's records."""
    return read_metrics_counted(path)[0]


def read_metrics_counted(path):
    """metrics.jsonl's records, and how many lines were left out: a line cut short by a crash or a full disk,
    damaged bytes, or anything but a JSON object with a numeric step."""
    records, bad = [], 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), numbers.Real):
                records.append(record)
            elif raw.strip():
                bad += 1
    return records, bad


class RunLog:
    """Writes the run directory. Only the main rank writes; on other ranks every call is a no-op."""

    def __init__(self, out, enabled=True, resume_step=None, tensorboard=False):
        self.out, self.enabled = out, enabled
        self._plotted_at = None  # time.monotonic() of the last loss.png
        self.metrics_path = os.path.join(out, "metrics.jsonl")
        self.tensorboard = None
        if not enabled:
            return
        with writing(os.path.join(out, "samples")):
            os.makedirs(os.path.join(out, "samples"), exist_ok=True)
        kept = []
        if resume_step is not None and os.path.exists(self.metrics_path):
            # Lines logged after the checkpoint we resume from are replaced by the resumed run.
            records, bad = read_metrics_counted(self.metrics_path)
            kept = [r for r in records if r["step"] <= resume_step]
            if bad:
                print(
                    f"genperf: {self.metrics_path}: left out {bad} damaged line{'s' if bad > 1 else ''}",
                    file=sys.stderr,
                    flush=True,
                )
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.metrics_path)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops what earlier event files logged after the step we resume from.
            self.tensorboard = SummaryWriter(out, purge_step=resume_step)

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def write_json(self, name, obj):
        if self.enabled:
            atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", self.path(name))

    def log(self, record):
        """One line of metrics.jsonl; its numbers also go to TensorBoard as SPLIT/NAME at its step."""
        if not self.enabled:
            return
        with writing(self.metrics_path), open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard:
            for key, value in record.items():
                if key not in ("step", "epoch", "split") and isinstance(value, numbers.Real):
                    self.tensorboard.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["step"])

    def save_samples(self, samples, name, step, real=None):
        """samples/NAME.png (and TensorBoard's "samples" at `step`): an image grid (N, C, H, W in
        [0, 1]) or, for 2-D points, a scatter plot over `real`."""
        if not self.enabled:
            return None
        path = self.path("samples", f"{name}.png")
        if samples.dim() == 4:
            grid = image_grid(samples, min_cell=MIN_GRID_CELL)
            save_png(grid, path)
            if self.tensorboard:
                self.tensorboard.add_image("samples", grid, step)
        else:
            fig = scatter(samples, real, name)
            save_figure(fig, path)
            if self.tensorboard:
                self.tensorboard.add_figure("samples", fig, step)  # closes it
            else:
                pyplot().close(fig)
        return path

    def close(self):
        if self.tensorboard:
            self.tensorboard.close()

    def plot_losses(self, final=False):
        """loss.png: each training metric against the step, held-out metrics as markers. Redrawn at most every
        LOSS_PLOT_EVERY_S and at the end (`final`): drawing it takes about 0.3 s, which at every epoch of a
        small model was half of the run."""
        if not self.enabled or not os.path.exists(self.metrics_path):
            return
        if not final and self._plotted_at is not None and time.monotonic() - self._plotted_at < LOSS_PLOT_EVERY_S:
            return
        self._plotted_at = time.monotonic()
        records = read_metrics(self.metrics_path)
        train = [r for r in records if r.get("split") == "train"]
        heldout = [r for r in records if r.get("split") == "heldout"]
        keys = [
            k for k in (train[0] if train else {}) if k not in ("step", "epoch", "split", "images_per_s", "mfu", "lr")
        ]
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
        save_figure(fig, self.path("loss.png"))
        plt.close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LOSS_PLOT_EVERY_S = 30.0
MIN_GRID_CELL = 28  # pixels: the per-epoch grids enlarge smaller images, so 8x8 digits stay legible


def image_grid(images, nrow=8, min_cell=0, padding=2, pad_value=0.0):
    """(N, C, H, W) in [0, 1] -> one (C, H', W') grid image, `nrow` images a row, `padding`-pixel gaps of
    `pad_value`. Images under `min_cell` pixels are enlarged (nearest neighbour, by a whole factor)."""
    import torch
    import torchvision

    images = images.float().cpu().clamp(0, 1)
    scale = -(-min_cell // images.shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    return torchvision.utils.make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)


def save_png(image, path):
    """Writes an image (C, H, W in [0, 1]) as a PNG, atomically."""
    import torchvision

    with atomic_path(path) as tmp:
        torchvision.utils.save_image(image, tmp, format="png")


def save_figure(fig, path):
    """Writes a matplotlib figure as a PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def scatter(points, real=None, title=None):
    """A scatter plot of generated 2-D points over the real ones; returns the figure."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if real is not None:
        ax.scatter(*real.cpu().T, s=2, alpha=0.3, label="real")
    ax.scatter(*points.float().cpu().T, s=2, alpha=0.6, label="generated")
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    return fig
