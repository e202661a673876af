"""The numerics and memory of a training step: mixed precision (autocast, GradScaler), the optimizer, and how
the CPU allocator keeps freed memory."""

from __future__ import annotations

import os
import sys

import torch

from genperf.dtypes import cpu_has_bf16
from genperf.sharded import ShardedAdam, clip_grad_norm_, on_shards

CPU_BF16_ENV = "GENPERF_CPU_BF16"  # =1: bf16 autocast on a CPU even without bf16 kernels (slow; for checks)


class Precision:
    """--amp: bf16 autocast where the device computes bf16, fp16 with a GradScaler on a GPU without bf16,
    and fp32 on a CPU without bf16 kernels (where autocast would only make the run slower), said in `note`.

    `step` runs backward and the optimizer step; with a GradScaler a step whose gradients overflowed
    is skipped by the scaler, and counted here in `skipped_steps`."""

    def __init__(self, device_type: str, enabled: bool):
        self.device_type, self.enabled = device_type, enabled
        self.dtype, self.note = None, None
        if enabled and device_type == "cpu" and not cpu_has_bf16() and os.environ.get(CPU_BF16_ENV) != "1":
            self.enabled = False
            self.note = (
                f"--amp: this CPU has no bf16 kernels (they need AVX-512), so bf16 autocast would run 15-90x "
                f"slower than fp32; training in fp32 instead ({CPU_BF16_ENV}=1 forces bf16)"
            )
        elif enabled:
            bf16 = device_type != "cuda" or torch.cuda.is_bf16_supported()
            self.dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler(device_type) if self.dtype == torch.float16 else None
        self._skipped = 0  # a device tensor once a GradScaler has skipped: counted without a host sync

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.enabled)

    def step(self, loss, optimizer, clip_grad=None):
        optimizer.zero_grad(set_to_none=True)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.scaler is None:
            loss.backward()
            if clip_grad:
                clip_grad_norm_(params, clip_grad)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if clip_grad:
            self.scaler.unscale_(optimizer)
            clip_grad_norm_(params, clip_grad)
        scale = self.scaler._scale.clone()  # get_scale() would read it on the host
        self.scaler.step(optimizer)
        self.scaler.update()
        self._skipped = self._skipped + (self.scaler._scale < scale).int()  # update() lowers it after an overflow

    @property
    def skipped_steps(self):
        return int(self._skipped)

    def state_dict(self):
        return {"skipped_steps": self.skipped_steps, "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state):
        self._skipped = state["skipped_steps"]
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


def set_malloc_thresholds(mmap_bytes, trim_bytes):
    """glibc's mallopt: blocks of `mmap_bytes` or more are mmapped (and unmapped on free), and the heap
    is trimmed back to the OS above `trim_bytes` free. Returns whether it applied (Linux glibc only)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, mmap_bytes)) and bool(libc.mallopt(m_trim_threshold, trim_bytes))


def keep_freed_cpu_memory():
    """Tells glibc to keep freed buffers (up to 32 MiB each) for reuse instead of returning them to
    the OS: otherwise every large CPU tensor is fresh memory that page-faults on first touch, which on
    a 2-core Xeon cost more than the arithmetic of a fused coupling backward. Returns whether it applied."""
    return set_malloc_thresholds(32 << 20, 1 << 30)


def make_adam(params, lr, betas, device_type):
    """Adam, fused (one kernel over all parameters) on CUDA and CPU, the devices torch fuses it on; over FSDP2's
    shards, the same kernel on each rank's local shards (genperf.sharded)."""
    if device_type == "meta":  # genperf.trainer.step_cost: the same state, in a few ops instead of one per parameter
        return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)
    params = list(params)
    if device_type in ("cuda", "cpu") and on_shards(params):
        return ShardedAdam(params, lr, betas)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=device_type in ("cuda", "cpu"))
