"""The model families, found here: each module of this package that defines FAMILY (a genperf.families.base.Family)
is one, and its models become genperf's. Adding a family is adding a module (see "Adding a model family" in
docs/design.md)."""

from __future__ import annotations

import importlib
import pkgutil

from genperf.errors import GenperfError
from genperf.families.base import Family


def _discover():
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "FAMILY", None), Family):
            found.append(module.FAMILY)
    return sorted(found, key=lambda f: (f.order, f.name))


FAMILIES = _discover()
FAMILY_OF = {model: family for family in FAMILIES for model in family.models}
MODELS = tuple(FAMILY_OF)  # every model, family by family


def build_objective(config, data, precision, device, rank=0, world_size=1):
    """The model of `config.model` for data of `data.shape`, on `device` in the layout of --channels-last, sharded
    under --fsdp, wrapped in its training objective (which builds the optimizers, so after sharding)."""
    try:
        return FAMILY_OF[config.model].build(config, data, precision, device, rank, world_size)
    except ValueError as e:  # shapes a model cannot take
        raise GenperfError(str(e)) from None


__all__ = ["FAMILIES", "FAMILY_OF", "MODELS", "Family", "build_objective"]
