"""torch.compile as genperf's objectives use it: graphs whose batch dimension is symbolic, so that the graphs
compiled for one batch size serve every other (a resumed run with another --batch-size or rank count, the
benchmarks' batch sweeps) instead of each new size compiling them again."""

from __future__ import annotations

import torch


def batch_dynamic(x):
    """`x`, its first dimension marked as a batch that may change, for the compiled region it is passed to
    (a hint: dynamo may still specialize it). Nothing inside a region being compiled."""
    if not torch.compiler.is_compiling():
        torch._dynamo.maybe_mark_dynamic(x, 0)
    return x


def compile_batch_dynamic(fn, **options):
    """torch.compile(fn, **options), whose tensor arguments' first dimension is marked as a batch."""
    compiled = torch.compile(fn, **options)

    def call(*args, **kwargs):
        return compiled(*(batch_dynamic(a) if isinstance(a, torch.Tensor) else a for a in args), **kwargs)

    return call
