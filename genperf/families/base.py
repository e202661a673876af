"""What a model family is to the rest of genperf (docs/design.md: how to add one)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Family:
    """One family of models: everything genperf needs to train, resume, sample and evaluate them.

    build(config, data, precision, device, rank=0, world_size=1) -> objective: the models of `config.model` for
    data of `data.shape` on `device` (sharded under config.fsdp), wrapped in their training objective, which
    exposes `modules` and `optimizers` (dicts by name), `train_step(x, step) -> {metric: tensor}`,
    `noise(n, generator)`, `sample(noise)`, `evaluate(batches) -> {metric: float}` and `compile(**options)`.

    likelihood(run, batches, samples, wanted, progress) -> {metric: value}: genperf.evaluate's metrics of this
    family (`likelihood_metrics`, each averaged over `samples` draws, `default_samples` unless asked), and
    summary(result) the lines it prints for them."""

    name: str
    order: int  # where its models come in listings (the CLI's choices, the selftest)
    models: dict  # model -> {"help": one line, then per-model defaults of options: lr, epochs, latent_dim, ...}
    build: Callable
    options: tuple = ()  # genperf.options.Option entries that apply to this family's models
    check: Callable | None = None  # check(config): refusals that need more than one option's range
    likelihood: Callable | None = None
    likelihood_metrics: tuple = ()
    default_samples: int = 1
    summary: Callable | None = None
    image_only: bool = False  # whether it needs image data (GANs also train on the 2-D mixtures)
    no_fsdp: dict = field(default_factory=dict)  # model -> why it cannot run under --fsdp
    fused_ops: dict = field(default_factory=dict)  # model -> the fused ops (genperf.ops) its training step calls
    heldout_reading: str = ""  # how to read the held-out metrics, for the line a finished run ends with


def placer(config, device):
    """module -> the module on `device`, in the layout --channels-last asks for."""
    layout = torch.channels_last if config.channels_last else torch.preserve_format
    return lambda module: module.to(device, memory_format=layout)
