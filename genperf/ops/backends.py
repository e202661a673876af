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

NAMES = ("reference", "cpu", "cuda", "triton")
# Fastest first, per device type.
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


def select(device: torch.device) -> str:
    """The backend for tensors on `device`: the forced one, GENPERF_BACKEND, or the fastest available."""
    name = _forced[0] or _default
    if name is not None:
        _check(name)
        runs_on = {"cpu": "cpu", "cuda": "cuda"}.get(name, device.type)
        if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            runs_on = "cuda"
        if runs_on != device.type:
            raise BackendError(f"genperf backend {name!r} cannot run on {device.type} tensors")
        return name
    for candidate in PREFERENCE.get(device.type, ()):
        if _REASONS[candidate] is None:
            return candidate
    if device.type not in _warned and device.type != "meta":  # meta: shapes only (genperf.memory's estimate)
        _warned.add(device.type)
        why = "; ".join(f"{n}: {_REASONS[n]}" for n in PREFERENCE.get(device.type, ()))
        print(
            f"genperf: no fused backend for {device.type} tensors ({why or 'none exists'}); "
            f"the ops run their pure-torch reference",
            file=sys.stderr,
        )
    return "reference"
