"""python benchmarks/audit_step.py MODEL [training options] [--warmup N] [--audit-steps K] [--table N] [--json F]

Where a training step's time can go, counted rather than timed, so the same numbers come out on a CPU and on a
GPU: the real step of `python -m genperf.train` (genperf.trainer.Trainer, with its checks and logging, on batches
from its own loader) is built from the given options, warmed up (compiled graphs compile there), and then K
steady-state steps are watched twice:

  profiled      torch.profiler over K steps as they run (compiled regions included): ops dispatched, kernels
                launched (CUDA), compiled regions entered, host-device synchronizations (a Tensor's item(),
                tolist(), numpy(), cpu(), bool()/int()/float(), CUDA event or device synchronizes, each named
                by the line that asked for it; aten::_local_scalar_dense, nonzero and cudaStreamSynchronize
                from C++, named by the Python function around them), dtype casts (aten::_to_copy calls and
                the bytes they read), and convolutions fed an NCHW tensor or with channel counts that are not
                multiples of 8 (tensor cores want multiples of 8 in bf16/fp16)
  eager trace   one more step under a TorchDispatchMode, which runs compiled regions eagerly: every op that
                turns a channels_last tensor into an NCHW one, with the line that called it and the bytes
                written (what the model's code asks for; inside a compiled graph inductor picks the layouts)

and torch._dynamo's counters: graphs compiled, graph breaks with their reasons, recompiles during the
watched steps, CUDA graphs skipped. The watched steps are chosen so that none of them writes a log line
(logging reads its numbers every --log-every steps). Under --ddp or --fsdp it runs under torchrun, each rank
auditing its own step. Prints one screen; --json writes every number. docs/gpu.md explains how to read it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import sys
import tempfile
import traceback

import torch
from torch.autograd import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

HOST_READ = "genperf.audit: host read"  # the profiler range around a Tensor method that reads device memory
TENSOR_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
# Ops whose output size depends on the data: the host waits for the device to learn it.
DATA_DEPENDENT = {
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
}
# CUDA calls that wait. On a CPU, scalar reads from C++ are not counted: a CPU has no device to wait for, and the
# one a step makes there (fused Adam reading its step counts) keeps them on the device on CUDA.
CUDA_SYNCS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"}
KERNEL_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")
TORCH_DIR = os.path.dirname(torch.__file__)
# torch's own wrappers between a caller and what it called (dynamo's disable decorators, dispatch-mode plumbing)
TORCH_PLUMBING = ("_compile.py", "_python_dispatch.py", f"_dynamo{os.sep}")
THIS_FILE = os.path.abspath(__file__)


def caller():
    """'file:line' of the innermost frame outside torch and this file, with the torch function it called, if
    any: 'genperf/precision.py:52 via torch/amp/grad_scaler.py:201'."""
    frames = [f for f in traceback.extract_stack()[:-1] if os.path.abspath(f.filename) != THIS_FILE]
    outside = [i for i, f in enumerate(frames) if not f.filename.startswith(TORCH_DIR)]
    if not outside:
        return "?"
    i = outside[-1]
    where = f"{_short(frames[i].filename)}:{frames[i].lineno}"
    api = [f for f in frames[i + 1 :] if not any(part in f.filename for part in TORCH_PLUMBING)]
    return where + (f" via {_short(api[0].filename)}:{api[0].lineno}" if api else "")


def _short(path):
    for root in (os.path.dirname(TORCH_DIR), os.getcwd()):
        if path.startswith(root + os.sep):
            return os.path.relpath(path, root)
    return path


class HostReads:
    """While active, every Tensor method call that reads device memory on the host (TENSOR_READS, on a tensor of
    `device_type`) and every CUDA synchronize is counted by the line that made it, and runs inside a profiler
    range (HOST_READ) so that the profiler's own sync events under it are not counted twice. Calls that
    torch.compile traces are left alone (they would be graph breaks, counted as such)."""

    def __init__(self, device_type):
        self.device_type, self.calls, self.depth, self.saved = device_type, collections.Counter(), 0, []

    def __enter__(self):
        targets = [(torch.Tensor, name) for name in TENSOR_READS]
        if self.device_type == "cuda":
            targets += [(owner, "synchronize") for owner in (torch.cuda.Event, torch.cuda.Stream, torch.cuda)]
        for owner, name in targets:
            original = getattr(owner, name)
            self.saved.append((owner, name, original))
            setattr(owner, name, self._wrap(name, original, owner is torch.Tensor))
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        self.saved = []

    def _wrap(self, name, original, of_tensor):
        reads = self

        def read(*args, **kwargs):
            if reads.depth or torch.compiler.is_compiling():
                return original(*args, **kwargs)
            if of_tensor and args[0].device.type != reads.device_type:  # a host tensor: no device to wait for
                return original(*args, **kwargs)
            reads.calls[(name.strip("_"), caller())] += 1
            reads.depth += 1
            try:
                with torch.profiler.record_function(HOST_READ):
                    return original(*args, **kwargs)
            finally:
                reads.depth -= 1

        return read


def _python_location(event):
    """The innermost Python function around a profiler event, outside torch ('genperf/x.py(12): f'), if known."""
    e = event.cpu_parent
    while e is not None:
        if "(" in e.name and ".py" in e.name and TORCH_DIR not in e.name and "torch/" not in e.name:
            return e.name
        e = e.cpu_parent
    return "?"


def _ancestors(event):
    e = event.cpu_parent
    while e is not None:
        yield e
        e = e.cpu_parent


def _channels_innermost(strides, shape):
    """For a 4-D tensor: True if channels are its innermost dimension (channels_last order), False if the width
    is (NCHW), None if its shape cannot tell (one channel, or one pixel)."""
    if len(shape) != 4 or shape[1] == 1 or shape[2] * shape[3] == 1:
        return None
    return strides[1] < strides[3] if shape[3] > 1 else strides[1] < strides[2]


def _nbytes(shape, dtype_name):
    sizes = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "double": 8, "unsigned char": 1, "long": 8, "int": 4}
    return math.prod(shape) * sizes.get(dtype_name, 4)


def read_profile(events, steps, device_type):
    """The per-step counts of a profile of `steps` steps (events: profiler.events()) on `device_type`."""
    cpp_syncs = DATA_DEPENDENT | (CUDA_SYNCS if device_type == "cuda" else set())
    counts = collections.Counter()
    syncs = collections.Counter()
    odd_convs, nchw_convs, top_ops = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        name = e.name
        parents = list(_ancestors(e))
        under_aten = any(p.name.startswith("aten::") for p in parents)
        if name.startswith("aten::") and not under_aten:
            counts["ops"] += 1
            top_ops[name] += 1
        if name in KERNEL_LAUNCHES:
            counts["kernel_launches"] += 1
        if name.startswith("Torch-Compiled Region"):
            counts["compiled_region_calls"] += 1
        if name in cpp_syncs and not any(p.name == HOST_READ for p in parents):
            syncs[(name, _python_location(e))] += 1
        if e.device_type == DeviceType.CUDA:  # a kernel (or copy) as it ran on the GPU
            counts["device_us"] += e.time_range.elapsed_us()
        if name == "aten::_to_copy" and e.input_shapes and e.input_shapes[0]:
            dtypes = getattr(e, "input_dtypes", None) or ["float"]  # (not recorded before torch 2.12)
            counts["casts"] += 1
            counts["cast_bytes"] += _nbytes(e.input_shapes[0], dtypes[0])
        if (
            "convolution" in name
            and "backward" not in name
            and not any(p.name.startswith("aten::") and "convolution" in p.name for p in parents)
            and len(e.input_shapes) > 1
            and len(e.input_shapes[1]) == 4
        ):
            x_shape, w_shape = e.input_shapes[0], e.input_shapes[1]
            counts["convolutions"] += 1
            transposed = name == "aten::convolution" and len(e.concrete_inputs) > 6 and e.concrete_inputs[6] is True
            cin, cout = x_shape[1], w_shape[1] if transposed else w_shape[0]
            if cin % 8 or cout % 8:
                odd_convs[f"{cin}->{cout}"] += 1
            strides = getattr(e, "structured_input_strides", None)  # (not recorded before torch 2.12)
            if strides and _channels_innermost(strides[0], x_shape) is False:
                nchw_convs[f"{cin}->{cout} {'x'.join(map(str, x_shape[2:]))}"] += 1
    per_step = {k: v / steps for k, v in counts.items()}
    return dict(
        ops=per_step.get("ops", 0.0),
        kernel_launches=per_step.get("kernel_launches", 0.0),
        compiled_region_calls=per_step.get("compiled_region_calls", 0.0),
        casts=per_step.get("casts", 0.0),
        cast_bytes=per_step.get("cast_bytes", 0.0),
        convolutions=per_step.get("convolutions", 0.0),
        device_ms=per_step.get("device_us", 0.0) / 1e3,
        cpp_syncs={f"{n} in {where}": c / steps for (n, where), c in syncs.items()},
        convs_not_multiple_of_8={k: c / steps for k, c in odd_convs.items()},
        convs_fed_nchw={k: c / steps for k, c in nchw_convs.items()},
        most_dispatched={k: c / steps for k, c in top_ops.most_common(12)},
    )


def _in_compiled_region():
    """Whether the code on the stack runs inside a torch.compile'd function (here run eagerly)."""
    return any(f.name == "compile_wrapper" and f.filename.startswith(TORCH_DIR) for f in traceback.extract_stack())


FORWARD, COMPILED_FORWARD, BACKWARD = "forward", "forward in compiled regions", "backward"


def _storage_of(t):
    """Where t's storage starts, or None for a storage with no data (FSDP2 frees its unsharded parameters' storages
    between uses, and reading those pointers raises)."""
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return None


class LayoutChanges(TorchDispatchMode):
    """Every op that takes a channels_last 4-D tensor and returns an NCHW one: (phase, op, where) -> [count,
    bytes], where is the line that called it in forward and the autograd node in backward. The phases: forward
    outside compiled regions, forward inside them (run eagerly here; compiled, inductor picks the layouts), and
    backward (which this trace cannot split by region)."""

    def __init__(self):
        super().__init__()
        self.found = collections.defaultdict(lambda: [0, 0])
        self.written = 0  # bytes of every new tensor the step made, to set the changes against

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        storages = {_storage_of(t) for t in inputs}
        self.written += sum(
            o.numel() * o.element_size()
            for o in tree_leaves(out)
            if isinstance(o, torch.Tensor) and _storage_of(o) not in storages
        )
        ins = [t for t in inputs if t.dim() == 4]
        if any(_channels_innermost(t.stride(), t.shape) for t in ins):
            for o in tree_leaves(out):
                if (
                    isinstance(o, torch.Tensor)
                    and _storage_of(o) not in storages  # a view writes nothing
                    and _channels_innermost(o.stride(), o.shape) is False
                ):
                    node = torch._C._current_autograd_node()
                    if node is not None:
                        phase, where = BACKWARD, node.name()
                    else:
                        phase, where = COMPILED_FORWARD if _in_compiled_region() else FORWARD, caller()
                    entry = self.found[(phase, str(func.overloadpacket.__name__), where)]
                    entry[0] += 1
                    entry[1] += o.numel() * o.element_size()
        return out


def dynamo_counts():
    from torch._dynamo.utils import counters

    return dict(
        graphs=counters["stats"]["unique_graphs"],
        graph_breaks=dict(counters["graph_break"]),
        cudagraph_skips=counters["inductor"]["cudagraph_skips"],
    )


def kernel_table(prof, device_type, rows, steps=1):
    """The `rows` CUDA kernels with the most time per step, with their calls and share of all kernel time; on a
    CPU the profiler's table of the ops with the most self time."""
    if device_type != "cuda":
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70)
    total, calls = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            total[e.name] += e.time_range.elapsed_us()
            calls[e.name] += 1
    all_us = sum(total.values()) or 1.0
    lines = [f"{'us/step':>10s} {'share':>6s} {'calls':>6s}  kernel (top {rows} of {len(total)}, per step)"]
    for name, us in total.most_common(rows):
        short = name if len(name) <= 110 else name[:107] + "..."
        lines.append(f"{us / steps:10.1f} {100 * us / all_us:5.1f}% {calls[name] / steps:6g}  {short}")
    lines.append(f"{all_us / steps:10.1f} 100.0%         all kernels")
    return "\n".join(lines)


class StepSource:
    """The trainer's own batches, epoch after epoch, as its loop would feed them."""

    def __init__(self, trainer):
        self.trainer, self.epoch, self.it = trainer, 0, iter(trainer.train.epoch(0))

    def step(self):
        try:
            x = next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = iter(self.trainer.train.epoch(self.epoch))
            x = next(self.it)
        self.trainer.train_step(x)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def audit_trainer(trainer, warmup=2, steps=None, table=0):
    """Watches a built Trainer's steady-state steps; returns the audit as a dict (see the module's doc)."""
    c, device = trainer.config, trainer.device
    cycle = getattr(trainer.objective, "critic_iters", 1)
    steps = steps or max(2, cycle)
    source = StepSource(trainer)
    warmup = max(warmup, cycle)
    # The watched steps are warmup + 1 .. warmup + steps: moved past any step that logs.
    while any((trainer.step + warmup + i) % c.log_every == 0 for i in range(1, steps + 1)) and warmup < c.log_every:
        warmup += 1
    for _ in range(warmup):
        source.step()
    _sync(device)
    before = dynamo_counts()
    first = trainer.step + 1
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    reads = HostReads(device.type)
    with torch.profiler.profile(activities=activities, record_shapes=True, with_stack=True) as prof:
        with reads:
            for _ in range(steps):
                source.step()
        _sync(device)  # the steps' kernels end inside the profile; this wait is the audit's own
    counted = read_profile(prof.events(), steps, device.type)
    after = dynamo_counts()
    layout = LayoutChanges()
    with torch.compiler.set_stance("force_eager"), layout:  # dynamo cannot run under a dispatch mode
        source.step()
    _sync(device)
    host_reads = {f"{name}() at {where}": n / steps for (name, where), n in sorted(reads.calls.items())}
    logged = [s for s in range(first, first + steps) if s % c.log_every == 0]
    result = dict(
        model=c.model,
        options=getattr(trainer, "audit_argv", None),
        device=str(device),
        steps_watched=[first, first + steps - 1],
        log_steps_watched=logged,
        warmup_steps=warmup,
        host_syncs_per_step=sum(host_reads.values()) + sum(counted["cpp_syncs"].values()),
        host_reads=host_reads,
        **counted,
        compiled_graphs=after["graphs"],
        recompiles_while_watched=after["graphs"] - before["graphs"],
        graph_breaks=sum(after["graph_breaks"].values()),
        graph_break_reasons=after["graph_breaks"],
        cudagraph_skips=after["cudagraph_skips"],
        layout_changes={
            f"{op} at {where} ({phase})": dict(count=n, bytes=b) for (phase, op, where), (n, b) in layout.found.items()
        },
        layout_change_bytes={
            phase: sum(b for (p, _, _), (_, b) in layout.found.items() if p == phase)
            for phase in (FORWARD, COMPILED_FORWARD, BACKWARD)
        },
        bytes_written=layout.written,
    )
    if table:
        result["table"] = kernel_table(prof, device.type, table, steps)
    return result


def build_trainer(train_argv, out):
    """The Trainer that `python -m genperf.train *train_argv --out out` would run on this process's rank."""
    from genperf.config import check, parse_args
    from genperf.distributed import init_distributed, under_torchrun
    from genperf.errors import GenperfError
    from genperf.trainer import Trainer

    config = parse_args([*train_argv, "--out", out])
    check(config)
    if (config.ddp or config.fsdp) and not under_torchrun():
        raise GenperfError("auditing --ddp or --fsdp needs the ranks: run it under torchrun --nproc-per-node N")
    trainer = Trainer(config, init_distributed(config.device))
    trainer.audit_argv = list(train_argv)
    return trainer


def audit(train_argv, warmup=2, steps=None, table=0):
    """Builds genperf.train's step for `train_argv` (a command line after `python -m genperf.train`) in a scratch
    run folder and audits it."""
    from genperf.ops.backends import use_backend

    with tempfile.TemporaryDirectory(prefix="genperf-audit-") as out:
        trainer = build_trainer(train_argv, os.path.join(out, "run"))
        backend = trainer.config.backend
        with use_backend(backend) if backend else contextlib.nullcontext():
            return audit_trainer(trainer, warmup, steps, table)


def _mib(n):
    return f"{n / 2**20:.2f} MiB"


def report(a):
    """The audit as lines of text, one screen."""
    lines = [
        f"audit of `genperf.train {' '.join(a['options'] or [a['model']])}` on {a['device']}: steps "
        f"{a['steps_watched'][0]}-{a['steps_watched'][1]} after {a['warmup_steps']} of warm-up"
        + (f" (steps {a['log_steps_watched']} log)" if a["log_steps_watched"] else " (none of them logs)"),
        f"  ops dispatched per step          {a['ops']:.0f}"
        + (
            f"; CUDA kernel launches {a['kernel_launches']:.0f}, kernels busy {a['device_ms']:.1f} ms"
            if a["device"].startswith("cuda")
            else ""
        ),
        f"  compiled graphs                  {a['compiled_graphs']} (regions entered per step "
        f"{a['compiled_region_calls']:.0f}); recompiles while watched {a['recompiles_while_watched']}; "
        f"graph breaks {a['graph_breaks']}; CUDA graphs skipped {a['cudagraph_skips']}",
        f"  host syncs per step              {a['host_syncs_per_step']:g}",
    ]
    lines += [f"    {n:g} x {what}" for what, n in {**a["host_reads"], **a["cpp_syncs"]}.items()]
    lines += [f"    graph break: {reason} ({n}x)" for reason, n in a["graph_break_reasons"].items()]
    lines.append("  most dispatched: " + ", ".join(f"{k[6:]} {v:g}" for k, v in a["most_dispatched"].items()))
    lines.append(f"  dtype casts per step (_to_copy)  {a['casts']:.0f}, reading {_mib(a['cast_bytes'])}")
    odd, nchw = a["convs_not_multiple_of_8"], sum(a["convs_fed_nchw"].values())
    lines.append(
        f"  convolutions per step            {a['convolutions']:.0f}; fed NCHW {nchw:.0f}; "
        f"channels not a multiple of 8: {sum(odd.values()):.0f}"
        + (f" ({', '.join(f'{k} x{v:g}' for k, v in odd.items())})" if odd else "")
    )
    lines.append(
        f"  channels_last -> NCHW per step   {sum(v['count'] for v in a['layout_changes'].values())}, writing "
        + ", ".join(f"{_mib(b)} {phase}" for phase, b in a["layout_change_bytes"].items())
        + f" of the {_mib(a['bytes_written'])} the step writes (eager trace)"
    )
    top = sorted(a["layout_changes"].items(), key=lambda kv: -kv[1]["bytes"])[:6]
    lines += [f"    {v['count']} x {what}: {_mib(v['bytes'])}" for what, v in top]
    if a.get("table"):
        lines += ["", a["table"]]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python benchmarks/audit_step.py",
        description="count what a steady-state genperf.train step launches, syncs, casts and re-lays out",
        epilog="every other option is genperf.train's (python -m genperf.train --help)",
    )
    p.add_argument("--warmup", type=int, default=2, help="steps before the watched ones (default 2)")
    p.add_argument("--audit-steps", type=int, default=None, help="steps watched (default 2, a WGAN's whole cycle)")
    p.add_argument("--table", type=int, default=0, metavar="N", help="also print the profiler's top N ops/kernels")
    p.add_argument("--json", default=None, metavar="FILE", help="write the audit here")
    args, train_argv = p.parse_known_args(argv)
    from genperf.errors import GenperfError

    try:
        result = audit(train_argv, args.warmup, args.audit_steps, args.table)
    except GenperfError as e:
        print(f"audit_step: error: {e}", file=sys.stderr)
        return 2
    from genperf.distributed import is_main_process

    if is_main_process():
        print(report(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return 0
