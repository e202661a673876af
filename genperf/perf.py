"""Throughput accounting: the model FLOPs and peak memory of a training step, the device's measured peak, MFU.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode (matrix multiplies and convolutions,
forward and backward, the WGAN-GP penalty's double backward included; elementwise work is not
counted, as usual for MFU). The peak is measured, not looked up: the FLOP/s of a large square
matmul on the same device in the same dtype, so MFU = achieved model FLOP/s / that peak."""

from __future__ import annotations

import csv
import functools
import os
import time
import weakref

import torch

from genperf.compiled import cpu_kind
from genperf.dtypes import cpu_has_bf16


def machine(device="cpu"):
    """The hardware a measurement ran on, as reports name it: "one NVIDIA H200" or "2-core <CPU model> (AMX),
    --amp runs bf16" (its kind, genperf.compiled.cpu_kind, and whether --amp computes in bf16 there, or in fp32 for
    want of fast bf16 kernels)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"one {torch.cuda.get_device_name(device)}"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "CPU")
    except OSError:
        name = "CPU"
    amp = "--amp runs bf16" if cpu_has_bf16() else "--amp runs fp32 (no fast bf16)"
    return f"{os.cpu_count()}-core {name} ({cpu_kind()}), {amp}"  # the kind: some CPUs name only their vendor


class _AllModules:
    """Stands in for FlopCounterMode's module tracker: every count goes to the total. The tracker's
    backward hooks fail under torch.autograd.grad of a leaf, which the WGAN-GP penalty runs, and only
    the total is wanted here."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def step_flops(step, steps=1):
    """FLOPs of `steps` calls of `step(i)` (i = 0, 1, ...), counted, divided by `steps`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _AllModules()
    with counter:
        for i in range(steps):
            step(i)
    return counter.get_total_flops() / steps


class PeakMemory:
    """Inside the block, the most bytes that tensors made in it held at once: every op's outputs are counted
    while their storage lives (views share theirs). Run on the meta device, this is a training step's memory
    without allocating any: tensors there have shapes and dtypes but no data."""

    def __init__(self):
        self.live, self.now, self.peak = {}, 0, 0

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker._count(t.untyped_storage())
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def _count(self, storage):
        key = storage._cdata
        if key not in self.live:
            self.live[key] = storage.nbytes()
            self.now += self.live[key]
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._free, key)

    def _free(self, key):
        self.now -= self.live.pop(key, 0)


def free_memory(device):
    """Bytes free for a run on `device`: the GPU's free memory, or the memory Linux reports available."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device, seconds):
    """The shortest of repeated timed calls of fn() over about `seconds`, after one untimed call
    (library initialisation, kernel selection)."""
    fn()
    _sync(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            return best


def measure_peak_flops(device_type: str, dtype: torch.dtype, size: int = 0, seconds: float = 0.3) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul in `dtype` on this device, best of repeated timings over
    about `seconds` (n = `size`, default 8192 on CUDA and 2048 on CPU); peak_flops caches it. A CPU without
    bf16 kernels (genperf.dtypes.cpu_has_bf16) does bf16 work with its fp32 units, so its bf16 peak is the
    fp32 one: the fallback bf16 matmul (~1 GFLOP/s there) is no peak, a bf16 step's convolutions outran it.
    On CUDA the fp32 peak is TF32's where cuDNN may use TF32 (torch.backends.cudnn.allow_tf32)."""
    device = torch.device(device_type)
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16():
        dtype = torch.float32
    n = size or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator(device).manual_seed(0)  # its own stream: measuring (once per process) never moves the caller's
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    # The models' FLOPs are convolutions, which cuDNN runs on TF32 tensor cores unless cudnn.allow_tf32 is off
    # (torch's default is on): their fp32 peak is the TF32 matmul's. Against strict fp32 an fp32 RealNVP step
    # read 177% MFU on an H200.
    matmul = torch.backends.cuda.matmul
    # Restored as the precision it was: setting allow_tf32 back would turn torch's "none" into "ieee", which
    # inductor's cache keys read, so a process that measured its peak would miss graphs another compiled.
    was = matmul.fp32_precision
    matmul.allow_tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    try:
        return 2 * n**3 / _best_seconds(lambda: a @ b, device, seconds)
    finally:
        matmul.fp32_precision = was


peak_flops = functools.cache(measure_peak_flops)  # once per process, for every run in it


@functools.cache
def copy_bandwidth(device_type: str, nbytes: int = 0, seconds: float = 0.3) -> float:
    """Bytes/s of a large same-device copy, counting the bytes read and the bytes written (the peak a
    memory-bound kernel can approach): `nbytes` per buffer (default 1 GiB on CUDA, 256 MiB on CPU),
    best of repeated timings over about `seconds`. Cached per process."""
    device = torch.device(device_type)
    n = (nbytes or ((1 << 30) if device.type == "cuda" else (256 << 20))) // 4
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    return 2 * 4 * n / _best_seconds(lambda: dst.copy_(src), device, seconds)


def append_csv(path, rows):
    """Appends benchmark rows (dicts) to the CSV at `path`; a new file gets the first row's columns as
    its header, an existing one keeps its own columns (fields it lacks are left out)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path)
    if new:
        fields = list(rows[0])
    else:
        with open(path, newline="") as f:
            fields = next(csv.reader(f))
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
