"""torch.compile as genperf's objectives use it: graphs whose batch dimension is symbolic, so that the graphs
compiled for one batch size serve every other (a resumed run with another --batch-size or rank count, the
benchmarks' batch sweeps) instead of each new size compiling them again."""

from __future__ import annotations

import json
import os

import torch

from genperf.dtypes import cpu_has_bf16


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


# ---- --compile auto: compile where the measured gain outlasts the compile's cost ----
COMPILE_CHOICES = ("auto", "on", "off")

# What --compile measured for RealNVP trained in one process, per CPU kind and step precision: (speed-up of a step
# over the same step eager, seconds of a cold compile). 2-core Intel Xeon (AMX), 2 scales, 32 features, 4 blocks,
# batch 64, eager and compiled steps alternating in one process (2026-12-07): bf16 0.957 -> 0.724 s a step, cold
# 122 s; fp32 1.869 -> 1.491 s, cold 89 s. The same model on a 2-core AMD EPYC Zen 4 (AVX-512 BF16, no AMX),
# `benchmarks/bench_train.py --models realnvp-race` (2026-12-07): bf16 0.884 -> 0.802 s, cold 83 s. Older code,
# mnist preset, batch 16: 2-core AMD EPYC (AVX2), fp32: 1.10x, cold 177 s. Nothing else is measured: there auto
# stays eager.
MEASURED = {
    ("realnvp", "AMX", "bf16"): (1.32, 122.0),
    ("realnvp", "AMX", "fp32"): (1.25, 89.0),
    ("realnvp", "AVX-512 BF16", "bf16"): (1.10, 83.0),
    ("realnvp", "AVX2", "fp32"): (1.10, 177.0),
}
# A cold compile can run in a child process that fills torch's on-disk cache while the run steps eagerly on one
# thread fewer; the run then compiles from that cache. Measured on the 2-core Xeon, the model above in bf16: the
# child took 132 s, the eager steps beside it 2.14 s instead of 0.96 s (they keep 45% of their speed), and the
# compile from the filled cache 7 s.
KEPT_BESIDE_CHILD = 0.45
FROM_FILLED_CACHE_S = 7.0
EAGER_STEPS_TIMED = 2  # auto times this many eager steps, after the first, before it decides
RECORD = "genperf-compile-seconds.json"  # in torch.compile's cache folder: seconds each configuration compiled in


def compile_choice(config):
    """--compile as "on", "off" or "auto" (runs stored before auto existed hold True or False)."""
    value = getattr(config, "compile", "off")
    return {True: "on", False: "off", None: "off"}.get(value, value)


def compile_options(config):
    """torch.compile's options for a run's objective: FSDP2's hooks break the graph at every sharded unit, DDP's at
    every gradient bucket, so those compile without fullgraph."""
    mode = None if config.compile_mode == "default" else config.compile_mode
    return dict(fullgraph=not (config.fsdp or config.ddp), mode=mode)


def cpu_kind():
    """The CPU's kind as far as compiled code cares: AMX, AVX-512 BF16, or AVX2 (no fast bf16). A CPU whose
    kernels are held below bf16 (ONEDNN_MAX_CPU_ISA=AVX2) counts as AVX2, as --amp's precision does."""
    if not cpu_has_bf16():
        return "AVX2"
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX-512 BF16" if torch.cpu._is_avx512_bf16_supported() else "AVX2"


def _record_path():
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return os.path.join(cache_dir(), RECORD)


def precision_name(dtype):
    """A step's precision as MEASURED and graph_key name it: the autocast dtype, fp32 without one."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def graph_key(config, device_type, precision):
    """What decides the compiled graphs of a run (its model and shapes, precision, layout, torch), as one string."""
    shaping = ("model", "data", "image_size", "channels", "batch_size", "mid_channels", "num_blocks")
    shaping += ("channels_last", "checkpointing", "compile_mode")
    arch = {k: v for k, v in sorted(vars(config).items()) if k in shaping}
    return json.dumps([arch, device_type, precision, torch.__version__])


def recorded_seconds(key):
    """The fewest seconds a compile of `key` took in this cache folder (a warm one, once it compiled), or None."""
    try:
        with open(_record_path()) as f:
            return json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def record_seconds(key, seconds):
    """Keeps the fewest seconds `key` compiled in; a cache folder that cannot be written keeps nothing."""
    try:
        path = _record_path()
        try:
            with open(path) as f:
                records = json.load(f)
        except (OSError, ValueError):
            records = {}
        records[key] = min(seconds, records.get(key, seconds))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(records, f)
        os.replace(tmp, path)
    except OSError:
        pass


def measured_gain(model, device_type, precision, parallel, invertible):
    """(speed-up, cold compile seconds, what was measured), or (None, None, why auto cannot judge)."""
    if invertible:
        return None, None, "--compile does not combine with --invertible"
    if parallel:
        return None, None, f"its gain under --{parallel} is not measured"
    kind = cpu_kind() if device_type == "cpu" else device_type
    found = MEASURED.get((model, kind, precision))
    if found is None:
        return None, None, f"its gain for {model} on {kind} in {precision} is not measured"
    return found[0], found[1], f"{found[0]:.2f}x for {model} on {kind} CPUs in {precision}"


def decide(gain, cold_s, warm_s, step_s, eager_left_s, child_possible):
    """(how, the numbers in words): how to compile, "here", "in a child" or None (stay eager), so that the time
    the rest of the run saves (`eager_left_s` of eager steps at `step_s` each) outlasts what compiling costs. A
    warm cache compiles here; a cold one in a child process where there is a thread to spare, the run losing only
    the speed its steps give up beside the child."""
    if warm_s is not None:
        how, cost, cache = "here", warm_s, "warm cache"
    elif child_possible:
        how, cache = "in a child", "cold cache, in a child process beside eager steps"
        cost = cold_s * (1 - KEPT_BESIDE_CHILD / gain) + FROM_FILLED_CACHE_S
    else:
        how, cost, cache = "here", cold_s, "cold cache"
    saved = eager_left_s * (1 - 1 / gain)
    words = (
        f"eager steps take {step_s:.2f} s; compiling costs about {cost:.0f} s ({cache}) and would save "
        f"{saved:.0f} s of the {eager_left_s:.0f} s of eager steps left"
    )
    return (how if saved > cost else None), words
