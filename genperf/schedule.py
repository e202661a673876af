"""The learning-rate schedule: the base rate times a linear ramp over the first --warmup steps, times a constant or
a cosine that falls from 1 at the first step to 0 at the run's last (--lr-schedule). A pure function of the step,
so a resumed run needs no scheduler state; each parameter group's base rate is kept in its "initial_lr"
(torch.optim.lr_scheduler's key), which the optimizer's state_dict carries."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_factor(step, done, warmup=0, schedule="constant"):
    """The fraction of the base learning rate that step `step` (0-based) trains at, `done` the fraction of the run
    behind it (step / total steps; a benchmark with a time budget passes the fraction of its time)."""
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
    return factor


def scheduled(warmup, schedule):
    """Whether a run with these options changes its learning rate at all (runs that do not keep their optimizers'
    state dicts as they were)."""
    return bool(warmup) or schedule == "cosine"


def set_lr(optimizers, factor):
    """Sets every parameter group of `optimizers` to its base rate times `factor`."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
