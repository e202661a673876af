"""What one training option is: its name, type, default, help, the models it applies to, its range, and whether
it may change when a run resumes. genperf.config holds the table of all of them; each model family declares its
own (genperf.families)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PER_MODEL = object()  # a default that the model's family sets (genperf.families.Family.models)


@dataclass(frozen=True)
class Option:
    name: str  # the attribute of a config, e.g. "batch_size" (the flag is --batch-size)
    help: str
    default: Any = None  # or PER_MODEL
    type: Callable | None = None  # None: a flag (--name sets True)
    choices: tuple | None = None
    models: tuple | None = None  # the models it applies to (None: all); config.json leaves it out elsewhere
    applies: Callable | None = None  # a further condition on the config (e.g. image data only)
    resumable: bool = False  # may differ when a run is resumed: changes neither its math nor its data
    at_least: float | None = None  # smallest value allowed
    above: float | None = None  # values must be larger than this (and finite)
    flag: str | None = None  # the flag when it is not --name (e.g. --no-download for download)
    nargs: str | None = None  # "?" with `const`: a flag that takes an optional value
    const: Any = None
    metavar: str | None = None
    absent: Any = PER_MODEL  # its value for runs stored before the option existed (PER_MODEL: the default's)

    @property
    def cli(self):
        return self.flag or "--" + self.name.replace("_", "-")

    def applies_to(self, config):
        """Whether this option means something for `config`'s model and data."""
        return (self.models is None or config.model in self.models) and (self.applies is None or self.applies(config))

    def add_to(self, parser, default):
        """Adds this option to an argparse parser, with `default` (the table's, or the model's)."""
        kwargs = dict(dest=self.name, help=self.help, default=default)
        if self.type is None:
            kwargs["action"] = "store_false" if self.flag and self.flag.startswith("--no-") else "store_true"
        else:
            kwargs.update(type=self.type, choices=self.choices, metavar=self.metavar)
            if self.nargs:
                kwargs.update(nargs=self.nargs, const=self.const)
        parser.add_argument(self.cli, **kwargs)

    def check(self, value):
        """A one-line reason when `value` is out of this option's range, else None."""
        if value is None or self.type is None:
            return None
        if self.at_least is not None and not value >= self.at_least:  # NaN too
            return f"{self.cli} must be >= {self.at_least:g} (got {value})"
        if self.above is not None and not (math.isfinite(value) and value > self.above):
            return f"{self.cli} must be a number > {self.above:g} (got {value})"
        return None
