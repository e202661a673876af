"""Which implementation runs a fused op.

    reference  pure torch (the `*_ref` functions); always available
    cpu        genperf._C, C++ with OpenMP, CPU tensors
    cuda       genperf._C built with CUDA, CUDA tensors
    triton     kernels/ (genperf.kernels), CUDA tensors, or CPU tensors under TRITON_INTERPRET=1

`use_backend(name)` forces one (and raises if it cannot run here), `GENPERF_BACKEND` sets the
default, otherwise the fastest available for the tensors' device runs. When no fused backend can
run on a device the reference runs, and genperf says so once on stderr.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import torch

from genperf.errors import BackendError
from genperf.ops.measured import RANKING, SOURCE

NAMES = ("reference", "cpu", "cuda", "triton")
# The fused backends of each device type, for devices and ops the measured ranking does not cover.
PREFERENCE = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


def _probe():
    """name -> None if it can run here, else the reason it cannot. Computed once, at import."""
    reasons = {"reference": None}
    try:
        from genperf import _C

        reasons["cpu"] = None
        if not _C.has_cuda():
            reasons["cuda"] = (
                "genperf._C was built without CUDA (no GPU visible or no nvcc at install time; "
                "reinstall where the GPU is, or with TORCH_CUDA_ARCH_LIST set)"
            )
        elif not torch.cuda.is_available():
            reasons["cuda"] = "no CUDA device"
        else:
            reasons["cuda"] = None
    except ImportError as e:
        reasons["cpu"] = reasons["cuda"] = (
            f"genperf._C is not built ({e}); reinstall with pip install --no-build-isolation -e ."
        )
    if importlib.util.find_spec("triton") is None:
        reasons["triton"] = "triton is not installed"
    elif torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        reasons["triton"] = None
    else:
        reasons["triton"] = "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run it on CPU tensors)"
    return reasons


_REASONS = _probe()
_forced = [None]  # innermost use_backend(); a plain list so torch.compile can read it as a global
_default = os.environ.get("GENPERF_BACKEND") or None
_warned = set()


def available_backends():
    return [n for n in NAMES if _REASONS[n] is None]


def unavailable_backends():
    """{name: why it cannot run here} for the backends that cannot."""
    return {n: why for n, why in _REASONS.items() if why}


def _check(name):
    if name not in NAMES:
        raise ValueError(f"unknown genperf backend {name!r}; choose one of {', '.join(NAMES)}")
    if _REASONS[name] is not None:
        raise BackendError(f"genperf backend {name!r} cannot run here: {_REASONS[name]}")


@contextlib.contextmanager
def use_backend(name):
    """Runs genperf's fused ops with backend `name` inside the block."""
    _check(name)
    previous, _forced[0] = _forced[0], name
    try:
        yield
    finally:
        _forced[0] = previous


def preference(device_type, op):
    """The backends to try for `op` on `device_type`, fastest first: as measured (genperf.ops.measured), then
    the device's fused backends not measured, then the pure-torch reference."""
    measured = [name for name, _ in RANKING.get(device_type, {}).get(op, ())]
    return list(dict.fromkeys([*measured, *PREFERENCE.get(device_type, ()), "reference"]))


def select(device: torch.device, op: str) -> str:
    """The backend of `op` for tensors on `device`: the forced one, GENPERF_BACKEND, or the fastest available as
    measured. Falling back to the reference because a faster backend cannot run here is said once."""
    name = _forced[0] or _default
    if name is not None:
        _check(name)
        runs_on = {"cpu": "cpu", "cuda": "cuda"}.get(name, device.type)
        if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            runs_on = "cuda"
        if runs_on != device.type:
            raise BackendError(f"genperf backend {name!r} cannot run on {device.type} tensors")
        return name
    order = preference(device.type, op)
    chosen = next(b for b in order if _REASONS[b] is None)  # the reference always can
    missed = order[: order.index(chosen)]
    if missed and device.type not in _warned and device.type != "meta":  # meta: shapes only (step_cost)
        _warned.add(device.type)
        why = "; ".join(f"{n}: {_REASONS[n]}" for n in missed)
        print(
            f"genperf: {op} cannot use its faster backends on {device.type} ({why}); it runs {chosen}", file=sys.stderr
        )
    return chosen


def describe(device_type, ops):
    """One line: the backend each of `ops` runs on `device_type` and why (its measured speed-up)."""
    if not ops:
        return None
    forced = _forced[0] or _default
    if forced:
        return f"fused ops on {device_type}: {forced} (forced) for {', '.join(ops)}"
    parts = []
    for op in ops:
        chosen = select(torch.device(device_type), op)
        speed = dict(RANKING.get(device_type, {}).get(op, ())).get(chosen)
        parts.append(f"{op} {chosen}" + (f" ({speed:.2f}x eager)" if speed else " (not measured on this device type)"))
    source = f"; measured on {SOURCE[device_type]}" if device_type in SOURCE else ""
    return f"fused ops on {device_type}: {', '.join(parts)}{source}; --backend chooses another"
