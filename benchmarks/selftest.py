"""python benchmarks/selftest.py --out DIR [--quick] [--device D] [--only STAGE,...]: every GPU path of genperf,
checked and measured in one command, on whatever device is here (the CPU runs the same checks at small sizes).
It runs from a source checkout: it builds the extension in place when missing, runs tests/ops and the benchmarks
here.

Stages, in order, under one time budget (--budget-s, the build included; a stage that would start past
it is skipped and says so), most in subprocesses with their own time limit so that a hang cannot stall
the suite; the most wanted evidence comes first, so that a run cut short still brings back the most:
  build       genperf._C built with CUDA when a GPU is here (built in place by an offline
              `pip install --no-deps --no-index --no-build-isolation -e .` if missing, timed), Triton
              importable; lists the backends that run on the device and why the others do not
  op-tests    tests/ops' backend tests on the device (GENPERF_TEST_DEVICE): coupling and penalty, every
              backend against the reference, fp32/bf16/fp16, odd shapes, masks, both directions, every
              gradient, gradcheck, opcheck, torch.compile with the ops inside
  train       a short --amp run of every model (--compile too; on CPU --quick, the VAE alone compiles):
              the loss is finite and the flow's and the VAE's loss falls
  boundary    tests/ops/test_boundary.py on the device: a bad argument to each raw kernel op, each case in a
              child process, raises an error naming it (a crash fails its case alone)
  throughput  benchmarks/bench_train.py on the headline RealNVP preset (celeba64 on a GPU) at batches 64, 128
              and 256: plain PyTorch beside every recommended flag, images/s, speedup, MFU; each variant
              profiled once (OUT/profiles/STAGE: audit counts and the 20 kernels with the most time)
  gan-speed   the same for DCGAN and WGAN-GP at 64x64, batch 64
  audit       benchmarks/audit_step.py of each model's recommended step: host syncs, kernel launches, graph
              breaks, casts, layouts (OUT/audit-MODEL.txt and .json)
  cudagraphs  the headline step with --compile-mode reduce-overhead beside the same flags without it
  memory      benchmarks/bench_memory.py (max_memory_allocated on a GPU)
  resume      a run stopped and resumed equals an uninterrupted one (bit for bit on CPU; on a GPU
              within 1e-4 relative, since cuDNN picks algorithms per call)
  fsdp        --amp --fsdp on this machine (nccl on a GPU, gloo on CPU) with every GPU there (2 CPU ranks)
  kernels     benchmarks/bench_kernels.py: GB/s against a copy measured in the same run
  dali        DALI's decoding of CelebA-shaped JPEGs on the device ("mixed" on a GPU)
  compile     benchmarks/compile_kernels.py for this GPU's architecture: registers and spills of every kernel
Writes DIR/selftest.json (every stage: status, seconds, numbers, output tail), DIR/selftest.md (a
table) and DIR/<stage>.log (every command a stage ran, with its whole output), and exits 1 if a
correctness stage (build, op-tests, train, fsdp, resume, dali) failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# On one H200 (RealNVP with the study's s/t network) the stages took: build 60-72 s, op-tests 42-45, train
# 33-45, throughput of the celeba64 preset 164 (129 of it compiling), memory 92, resume 28, fsdp 24, kernels 41:
# about 480 s in all. The default budget leaves room for a second, partial run (--only) in a 15-minute GPU
# window, so the last stages of a first run may be skipped.
BUDGET_S = 400
CORRECTNESS = ("build", "op-tests", "boundary", "train", "fsdp", "resume", "dali", "compile")
MODELS = {  # tiny versions of every model for the train stage (genperf.config's option names)
    "realnvp": {"mid_channels": 8, "num_blocks": 1},
    "dcgan": {"latent_dim": 16},
    "wgan-gp": {"latent_dim": 16, "critic_iters": 2},
    "wgan": {"latent_dim": 16, "critic_iters": 2},
    "vae": {},
    "beta-vae": {},
}


class Suite:
    def __init__(self, args):
        self.args, self.stages, self.start = args, [], time.perf_counter()
        self.device = args.device
        self.tmp = tempfile.mkdtemp(prefix="genperf-selftest-")
        self.stage_name, self.log_lock = "build", threading.Lock()
        os.makedirs(args.out, exist_ok=True)

    def left(self):
        """Seconds of the budget left; a build before a restart counts too."""
        return self.args.budget_s - self.args.built_s - (time.perf_counter() - self.start)

    def run(self, name, fn, needs_s=10):
        """Runs one stage: fn() -> (status, summary, data); exceptions and time-outs are failures."""
        t0, self.stage_name = time.perf_counter(), name
        if self.left() < needs_s:
            status, summary, data = "skip", f"time budget spent ({self.args.budget_s:.0f} s)", {}
        else:
            try:
                status, summary, data = fn()
            except subprocess.TimeoutExpired as e:
                status, summary, data = "fail", f"timed out after {e.timeout:.0f} s", {"output": _tail(e.output)}
            except Exception as e:  # a broken stage is a failed stage, and the suite goes on
                status, summary, data = "fail", f"{type(e).__name__}: {e}", {}
        stage = dict(name=name, status=status, summary=summary, seconds=round(time.perf_counter() - t0, 1), **data)
        self.stages.append(stage)
        print(f"genperf selftest: {name:10s} {status:4s} {stage['seconds']:6.1f} s  {summary}", flush=True)
        return stage

    def command(self, cmd, env=None):
        """Runs cmd from the repository root within the budget left; returns the finished process. Its whole
        output goes to OUT/<stage>.log (the report keeps only tails, and a crash's cause is at the start)."""
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=max(5.0, self.left()),
                env=dict(os.environ, **(env or {})),
            )
        except subprocess.TimeoutExpired as e:
            self.log(cmd, f"timed out after {e.timeout:.0f} s", e.output, e.stderr)
            raise
        self.log(cmd, f"exit {proc.returncode}", proc.stdout, proc.stderr)
        return proc

    def log(self, cmd, result, stdout, stderr):
        text = "".join(v.decode(errors="replace") if isinstance(v, bytes) else (v or "") for v in (stdout, stderr))
        with self.log_lock, open(os.path.join(self.args.out, f"{self.stage_name}.log"), "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{text}\n[{result}]\n\n")


def _tail(text, n=3000):
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def _output(proc):
    return _tail((proc.stdout or "") + (proc.stderr or ""))


# ---- stages ----


def stage_build(suite):
    """Uses the installed genperf._C, or builds it in place (offline) and re-runs the selftest."""
    import torch

    want_cuda = suite.device == "cuda"
    reason = _extension_problem(want_cuda)
    if reason and not suite.args.built_s:
        if suite.args.no_build:
            return "fail", f"{reason}; --no-build given", {}
        env = dict(os.environ)
        if want_cuda:  # CUDA for this GPU's architecture only (the default list builds two)
            major, minor = torch.cuda.get_device_capability()
            env.update(
                GENPERF_FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=env.get("TORCH_CUDA_ARCH_LIST") or f"{major}.{minor}"
            )
        else:
            env.update(GENPERF_SKIP_CUDA="1")
        print(
            f"genperf selftest: building the extension ({reason}): pip install --no-deps --no-index "
            f"--no-build-isolation -e . (TORCH_CUDA_ARCH_LIST={env.get('TORCH_CUDA_ARCH_LIST', 'none')})",
            flush=True,
        )
        t0 = time.perf_counter()
        # --use-pep517: an older pip would run setuptools' `develop`, which (setuptools >= 80) calls pip again
        # with build isolation, and that fetches setuptools from the network.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--use-pep517",
                "-e",
                REPO,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=max(60.0, suite.left()),
        )
        suite.log(proc.args, f"exit {proc.returncode}", proc.stdout, proc.stderr)
        if proc.returncode:
            return "fail", f"the build failed ({reason})", {"output": _output(proc)}
        # A fresh interpreter imports the new build (the build's seconds go with it, into the budget).
        os.execv(
            sys.executable,
            [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--built-s", f"{time.perf_counter() - t0:.1f}"],
        )
    if reason:
        return "fail", f"{reason} after building", {}
    from genperf.ops.backends import available_backends, unavailable_backends

    data = {
        "backends": available_backends(),
        "unavailable": unavailable_backends(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name() if want_cuda else platform.processor() or "cpu",
    }
    try:
        import triton

        data["triton"] = triton.__version__
    except ImportError:
        data["triton"] = None
    if suite.args.built_s:
        data["build_s"] = suite.args.built_s
    built = f"built in {suite.args.built_s:.0f} s, " if suite.args.built_s else "already built, "
    return "pass", built + "backends: " + ", ".join(data["backends"]), data


def _extension_problem(want_cuda):
    """Why genperf cannot run its fused kernels here (None if it can)."""
    try:
        import genperf.kernels  # noqa: F401  (kernels/ is mapped into the package by the install)
        from genperf import _C
    except ImportError as e:
        return f"not installed or not built ({e})"
    if want_cuda and not _C.has_cuda():
        return "genperf._C was built without CUDA"
    return None


def stage_op_tests(suite):
    report = os.path.join(suite.tmp, "ops.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "tests/ops"]
    if suite.args.quick and suite.device == "cpu":
        cmd += ["-k", "not triton"]  # the Triton interpreter is slow; CI runs those tests in full
    if suite.device == "cuda" and importlib.util.find_spec("xdist"):
        cmd += ["-n", "6"]  # Triton's and inductor's compiles dominate on a GPU; spread them over the cores
    proc = suite.command(cmd, env={"GENPERF_TEST_DEVICE": suite.device})
    counts = _junit_counts(report)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M)
    status = "pass" if proc.returncode == 0 else "fail"
    summary = (
        f"{counts.get('tests', 0) - counts.get('failures', 0) - counts.get('errors', 0) - counts.get('skipped', 0)} "
        f"passed, {counts.get('failures', 0) + counts.get('errors', 0)} failed, {counts.get('skipped', 0)} skipped"
    )
    return status, summary, {"counts": counts, "failed": failed, "output": _output(proc) if status == "fail" else ""}


def _junit_counts(path):
    import xml.etree.ElementTree as ET

    if not os.path.exists(path):
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _train(suite, model, out, extra, steps=30):
    """python -m genperf.train of `model` (MODELS' size) with the options `extra`, in a process of its own."""
    from genperf import config

    options = dict(
        data="digits",
        image_size=16,
        batch_size=32,
        steps=steps,
        log_every=5,
        out=out,
        device=suite.device,
        **MODELS[model],
        **extra,
    )
    cmd = [sys.executable, "-m", "genperf.train", *config.to_argv(config.make(model, **options))]
    proc = suite.command(
        cmd, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")} if suite.device == "cpu" else None
    )
    if proc.returncode:
        raise RuntimeError(f"{model} {extra} exited {proc.returncode}: {_tail(proc.stderr, 800)}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        train = [r for r in map(json.loads, f) if r["split"] == "train"]
    with open(os.path.join(out, "summary.json")) as f:
        return train, json.load(f), proc


def _train_side_by_side(suite, jobs):
    """_train of each (model, out, extra, steps): on CPU as many at once as there are cores, since each run takes
    one thread (OMP_NUM_THREADS=1); on a GPU all at once (their compiles overlap; these runs check
    correctness, not speed). Returns their results in order."""
    workers = len(jobs) if suite.device == "cuda" else max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: _train(suite, job[0], job[1], job[2], steps=job[3]), jobs))


def stage_train(suite):
    import math

    compile_all = not (suite.args.quick and suite.device == "cpu")
    flags = {model: {"amp": True, "compile": compile_all or model == "vae"} for model in MODELS}
    runs = dict(
        zip(
            MODELS,
            _train_side_by_side(suite, [(m, os.path.join(suite.tmp, f"train-{m}"), flags[m], 30) for m in MODELS]),
        )
    )
    results, problems = {}, []
    for model, (train, summary, _) in runs.items():
        extra = flags[model]
        key = {"realnvp": "bits_per_dim", "vae": "loss", "beta-vae": "loss"}.get(model)
        losses = {k: [r[k] for r in train] for k in train[0] if k.endswith("loss") or k == "bits_per_dim"}
        if not all(math.isfinite(v) for series in losses.values() for v in series):
            problems.append(f"{model}: non-finite loss")
        if key and not losses[key][-1] < losses[key][0]:
            problems.append(f"{model}: {key} did not fall ({losses[key][0]:.4g} -> {losses[key][-1]:.4g})")
        results[model] = dict(
            flags=extra,
            first={k: v[0] for k, v in losses.items()},
            last={k: v[-1] for k, v in losses.items()},
            images_per_s=summary["images_per_s"],
            compile_s=summary.get("compile_s"),
        )
    summary = (
        "; ".join(problems)
        or f"{len(results)} models trained with --amp"
        + (" --compile" if compile_all else " (--compile: vae)")
        + ", losses finite, flow and VAE losses fell"
    )
    return ("fail" if problems else "pass"), summary, {"models": results}


def stage_fsdp(suite):
    import torch

    nproc = max(1, torch.cuda.device_count()) if suite.device == "cuda" else 2
    train, summary, proc = _train(
        suite, "realnvp", os.path.join(suite.tmp, "fsdp"), {"amp": True, "fsdp": True, "nproc": nproc}, steps=20
    )
    backend = "nccl" if suite.device == "cuda" else "gloo"
    note = f"{nproc} rank(s), {backend}" + (
        " (a 2-rank nccl job needs 2 GPUs; this machine has 1)" if nproc == 1 else ""
    )
    ok = train[-1]["bits_per_dim"] < train[0]["bits_per_dim"]
    return (
        ("pass" if ok else "fail"),
        note + f", bits/dim {train[0]['bits_per_dim']:.3f} -> {train[-1]['bits_per_dim']:.3f}",
        {"world_size": summary["world_size"], "backend": backend},
    )


def stage_resume(suite):
    import torch

    whole, parts = os.path.join(suite.tmp, "whole"), os.path.join(suite.tmp, "parts")
    # a constant rate: under a cosine schedule (realnvp's default) the 10-step run's rate would fall to zero by its
    # end, and its --steps 20 on resume would reshape the rest, so the two runs would not train alike by design
    options = {"amp": True, "lr_schedule": "constant"}
    _train_side_by_side(suite, [("realnvp", whole, options, 20), ("realnvp", parts, options, 10)])
    _train(suite, "realnvp", parts, {"amp": True, "resume": True}, steps=20)
    a = torch.load(os.path.join(whole, "checkpoint.pt"), weights_only=True)["models"]["realnvp"]
    b = torch.load(os.path.join(parts, "checkpoint.pt"), weights_only=True)["models"]["realnvp"]
    worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)
    tolerance = 0.0 if suite.device == "cpu" else 1e-4
    ok = worst <= tolerance
    return (
        ("pass" if ok else "fail"),
        f"largest relative parameter difference {worst:.3g} (allowed {tolerance:g})",
        {"max_relative_difference": worst, "tolerance": tolerance},
    )


def stage_dali(suite):
    from genperf.data import celeba

    if not celeba.dali_available():
        where = "this machine" if suite.device == "cpu" else "the GPU machine (its image has no nvidia-dali)"
        return "skip", f"nvidia-dali is not installed on {where}: DALI not checked", {}
    import torch

    from genperf.data import make_batches

    root = os.path.join(suite.tmp, "celeba")
    celeba.write_fake_celeba(root, 96)
    folder = celeba.CelebAFolder(root, "train", 64, flip=False)
    t0 = time.perf_counter()
    got = torch.cat(list(make_batches(folder, 16, shuffle=False, device=suite.device, loader="dali").epoch(0)))
    seconds = time.perf_counter() - t0
    ref = torch.cat(list(make_batches(folder, 16, shuffle=False, loader="torch", workers=0).epoch(0)))
    diff = (got.cpu() - ref).abs()
    ok = diff.mean() < 0.5 / 255 and diff.max() <= 3 / 255 + 1e-6
    mode = "mixed (GPU)" if suite.device == "cuda" else "cpu"
    return (
        ("pass" if ok else "fail"),
        f"{mode} decoding of {len(got)} images vs torchvision: mean |diff| "
        f"{diff.mean() * 255:.2f}/255, max {diff.max() * 255:.1f}/255",
        {"images_per_s": len(got) / seconds},
    )


def stage_kernels(suite):
    quick = suite.args.quick
    cmd = [
        sys.executable,
        "benchmarks/bench_kernels.py",
        "--csv",
        os.path.join(suite.tmp, "kernels.csv"),
        "--dtypes",
        *(["bfloat16", "float32"] if suite.device == "cuda" else ["float32"]),
        "--device",
        suite.device,
        "--batches",
        *(["4"] if quick and suite.device == "cpu" else ["256"] if suite.device == "cuda" else ["64", "256"]),
        "--reps",
        "3" if quick else "20",
    ]
    proc = suite.command(cmd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("#", "affine_coupling", "gradient_penalty"))]
    fused = [line for line in lines if re.search(r"\s(cpu|cuda|triton)\s", line)]
    best = max(
        (float(m.group(1)) for line in fused for m in [re.search(r"\((\d+)% of the copy\)", line)] if m), default=0
    )
    status = "pass" if proc.returncode == 0 else "fail"
    return (
        status,
        f"{len(fused)} fused measurements, best {best:.0f}% of the measured copy bandwidth",
        {"lines": lines, "output": _output(proc) if status == "fail" else ""},
    )


def stage_compile(suite):
    """Every Triton kernel compiled ahead of time for this GPU's architecture (sm_90 on a CPU), and the CUDA
    module's kernels, with registers and spills (benchmarks/compile_kernels.py)."""
    import torch

    if suite.args.quick:
        return "skip", "not in --quick (minutes of compiling): python benchmarks/compile_kernels.py", {}
    arch = "".join(map(str, torch.cuda.get_device_capability())) if suite.device == "cuda" else "90"
    proc = suite.command([sys.executable, "benchmarks/compile_kernels.py", "--arch", arch])
    summary = next((line[2:] for line in proc.stdout.splitlines() if line.startswith("# ") and "builds" in line), "")
    status = "pass" if proc.returncode == 0 else "fail"
    return status, summary or "no summary", {"output": _output(proc)}


def stage_memory(suite):
    if suite.device == "cpu" and suite.args.quick:
        return "skip", "takes minutes on CPU; docs/scaling.md holds the CPU numbers", {}
    import torch

    single = ["fp32 baseline", "+amp", "+checkpointing", "+checkpointing block", "+invertible", "all on"]
    modes = single + (["all on + FSDP x2"] if torch.cuda.device_count() >= 2 or suite.device == "cpu" else [])
    proc = suite.command([sys.executable, "benchmarks/bench_memory.py", "--device", suite.device, "--only", *modes])
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    note = "" if len(modes) == len(single) + 1 else " (FSDP x2 needs 2 GPUs)"
    return (
        ("pass" if proc.returncode == 0 else "fail"),
        f"{len(lines) - 2} modes measured{note}",
        {
            "lines": lines,
            "predicted": predicted_beside_measured(lines),
            "output": _output(proc) if proc.returncode else "",
        },
    )


# bench_memory's modes as genperf.plan names them; the planner's rows for celeba64 are committed (computing them
# takes minutes of CPU): python -m genperf.plan realnvp --data celeba --arch celeba64 --json PLANNED
PLANNED = os.path.join(REPO, "benchmarks", "results", "plan-celeba64.json")
PLAN_MODE = {
    "fp32 baseline": "fp32",
    "+amp": "--amp",
    "+checkpointing": "--checkpointing coupling",
    "+checkpointing block": "--checkpointing block",
    "+invertible": "--invertible",
    "all on": "--amp --checkpointing block --invertible",
    "all on + FSDP x2": "--amp --checkpointing block --invertible --fsdp",
}


def predicted_beside_measured(lines):
    """Per mode: the activation memory per sample measured by bench_memory and the planner's prediction."""
    with open(PLANNED) as f:
        planned = {r["mode"]: r for r in json.load(f)["rows"]}
    out = []
    for line in lines:
        m = re.match(r"^(.+?)\s+([\d.]+) GiB\s+([\d.]+) MiB", line)
        mode = m and m.group(1).strip()
        if PLAN_MODE.get(mode) in planned:
            measured, predicted = float(m.group(3)), planned[PLAN_MODE[mode]]["per_sample"] / 2**20
            out.append(
                f"{mode}: measured {measured:.1f} MiB a sample, predicted {predicted:.1f} ({measured / predicted:.2f}x)"
            )
    return out


def stage_boundary(suite):
    """tests/ops/test_boundary.py on the device: every raw kernel op given a bad argument, each case in a child
    process, must raise an error naming it (the CUDA coupling's first failing check once crashed the process)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ops/test_boundary.py"]
    proc = suite.command(cmd, env={"GENPERF_TEST_DEVICE": suite.device})
    crashed = re.findall(r"crashed exit (-?\d+)", proc.stdout)
    summary = (re.findall(r"^(\d+ (?:passed|failed).*?) in ", proc.stdout, re.M) or ["no result"])[-1]
    summary += f"; {len(crashed)} crashed" if crashed else ""
    return ("pass" if proc.returncode == 0 else "fail"), summary, {"output": _output(proc) if proc.returncode else ""}


def _bench(suite, name, configs, variants, batches=None, rounds=3, profile=True):
    """benchmarks/bench_train.py of `configs` x `variants` (at `batches`), its rows in OUT/NAME.csv and, with
    `profile`, each variant's counts and top-20 kernels in OUT/profiles/NAME/ (a folder per stage: the cudagraphs
    stage profiles variants of the throughput stage's config too). Returns (status, rows, process)."""
    out = os.path.join(suite.args.out, f"{name}.csv")
    if os.path.exists(out):
        os.remove(out)
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", suite.device, "--models", *configs]
    cmd += ["--variants", *variants, "--rounds", str(rounds), "--csv", out]
    cmd += ["--batches", *map(str, batches)] if batches else []
    cmd += ["--profile", os.path.join(suite.args.out, "profiles", name)] if profile else []
    proc = suite.command(cmd)
    import csv

    rows = list(csv.DictReader(open(out))) if os.path.exists(out) else []
    return ("pass" if proc.returncode == 0 and rows else "fail"), rows, proc


def _speed_data(rows, proc, status):
    table = [
        {k: r[k] for k in ("config", "batch", "variant", "ms_per_step", "images_per_s", "speedup", "mfu", "dtype")}
        for r in rows
    ]
    return {"rows": table, "output": _output(proc) if status == "fail" else ""}


def stage_throughput(suite):
    """The headline step at growing batches: every recommended flag beside plain PyTorch, profiled at the first."""
    if suite.device == "cuda":
        config, batches = "realnvp-celeba64-b64", [64, 128, 256]
    else:
        config, batches = ("realnvp-tiny", [8, 16]) if suite.args.quick else ("realnvp-mnist-b16", [16])
    variants = ["baseline", "fused", "+amp", "+channels_last", "amp+channels_last", "all on"]
    if suite.device == "cpu" and suite.args.quick:
        variants = ["baseline", "+amp", "all on"]
    status, rows, proc = _bench(suite, "throughput", [config], variants, batches, rounds=1 if suite.args.quick else 3)
    best = {}
    for r in rows:
        if r["batch"] not in best or float(r["images_per_s"]) > float(best[r["batch"]]["images_per_s"]):
            best[r["batch"]] = r
    summary = "; ".join(
        f"batch {b}: {float(r['images_per_s']):.0f} img/s ({r['variant']}, {float(r['speedup']):.2f}x, "
        f"MFU {100 * float(r['mfu']):.0f}%)"
        for b, r in best.items()
    )
    return status, f"{config}: {summary}" if rows else "no rows", _speed_data(rows, proc, status)


def stage_gan_speed(suite):
    """DCGAN and WGAN-GP at 64x64, batch 64: each flag beside plain PyTorch."""
    if suite.device == "cuda" or not suite.args.quick:
        configs, rounds = ["dcgan-64", "wgan-gp-64"], 3
        variants = ["baseline", "fused", "+amp", "+channels_last", "amp+channels_last", "amp+compile", "all on"]
    else:
        configs, variants, rounds = ["dcgan-tiny", "wgan-gp-tiny"], ["baseline", "+amp", "all on"], 1
    status, rows, proc = _bench(suite, "gan-speed", configs, variants, rounds=rounds)
    slower = [f"{r['config']} {r['variant']} {float(r['speedup']):.2f}x" for r in rows if float(r["speedup"]) < 1]
    summary = f"{len(rows)} measured; slower than plain PyTorch: {', '.join(slower) or 'none'}"
    return status, summary if rows else "no rows", _speed_data(rows, proc, status)


def stage_cudagraphs(suite):
    """The headline step with CUDA graphs (--compile-mode reduce-overhead) beside the same flags without them."""
    config, batches = ("realnvp-celeba64-b64", [64]) if suite.device == "cuda" else ("realnvp-tiny", [8])
    variants = ["baseline", "all on", "all on+cudagraphs"]
    status, rows, proc = _bench(suite, "cudagraphs", [config], variants, batches, rounds=1 if suite.args.quick else 3)
    summary = ", ".join(
        f"{r['variant']} {float(r['images_per_s']):.0f} img/s ({float(r['speedup']):.2f}x)" for r in rows
    )
    return status, summary or "no rows", _speed_data(rows, proc, status)


AUDITS = {  # model -> genperf.train options on a GPU; on a CPU (--quick) at tiny sizes
    "realnvp": ["--arch", "celeba64", "--amp", "--compile", "--channels-last"],
    "dcgan": ["--amp", "--channels-last"],
    "wgan-gp": ["--amp", "--channels-last"],
}
TINY_AUDITS = {"realnvp": ["--mid-channels", "8", "--num-blocks", "1"], "dcgan": ["--latent-dim", "8"]}


def stage_audit(suite):
    """benchmarks/audit_step.py of each model's recommended step on the device: host syncs, launches, graph breaks,
    casts, layouts; the whole report in OUT/audit-MODEL.txt."""
    size, batch = ("64", "64") if suite.device == "cuda" or not suite.args.quick else ("16", "8")
    found, lines, failed = {}, [], []
    for model, options in AUDITS.items():
        if suite.device == "cpu" and suite.args.quick:
            options = [o for o in options if o not in ("--arch", "celeba64")] + TINY_AUDITS.get(model, [])
        path = os.path.join(suite.args.out, f"audit-{model}")
        cmd = [sys.executable, "benchmarks/audit_step.py", model, "--device", suite.device, "--data", "synthetic"]
        cmd += ["--image-size", size, "--batch-size", batch, *options, "--table", "20", "--json", path + ".json"]
        proc = suite.command(cmd)
        with open(path + ".txt", "w") as f:
            f.write(proc.stdout)
        if proc.returncode or not os.path.exists(path + ".json"):
            failed.append(model)
            continue
        a = json.load(open(path + ".json"))
        found[model] = {k: v for k, v in a.items() if k != "table"}
        launches = f"{a['kernel_launches']:.0f} kernel launches" if suite.device == "cuda" else f"{a['ops']:.0f} ops"
        lines.append(
            f"{model}: {a['host_syncs_per_step']:g} host syncs, {launches}, {a['compiled_graphs']} graphs, "
            f"{a['graph_breaks']} breaks, {a['casts']:.0f} casts per step"
        )
    status = "fail" if failed else "pass"
    return status, "; ".join(lines) + (f"; failed: {', '.join(failed)}" if failed else ""), {"audits": found}


# The most wanted evidence first, so that a run cut short by its budget still brings back the most: the kernels
# against the reference on the device, every model training, then the whole-step speed and the memory, then the
# rest of the correctness checks and the kernel bandwidths.
# Each is (name, the seconds it needs to start); stage "x-y" runs stage_x_y(suite).
STAGES = (
    ("op-tests", 20),
    ("train", 30),
    ("boundary", 10),
    ("throughput", 30),
    ("gan-speed", 30),
    ("audit", 30),
    ("cudagraphs", 30),
    ("memory", 30),
    ("resume", 15),
    ("fsdp", 20),
    ("kernels", 20),
    ("dali", 5),
    ("compile", 30),
)


# ---- report ----


def write_report(suite, out):
    os.makedirs(out, exist_ok=True)
    failed = [s["name"] for s in suite.stages if s["status"] == "fail" and s["name"] in CORRECTNESS]
    skipped = [s["name"] for s in suite.stages if s["status"] == "skip"]
    build = next((s for s in suite.stages if s["name"] == "build"), {})
    result = dict(
        device=suite.device,
        device_name=build.get("device_name"),
        quick=suite.args.quick,
        ok=not failed,
        failed=failed,
        skipped=skipped,
        seconds=round(time.perf_counter() - suite.start, 1),
        verdict=(f"FAILED: {', '.join(failed)}" if failed else "all correctness checks run passed")
        + (f"; skipped: {', '.join(skipped)}" if skipped else ""),
        stages=suite.stages,
    )
    with open(os.path.join(out, "selftest.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        f"# genperf selftest: {result['device_name'] or suite.device}, {'quick' if suite.args.quick else 'full'}, "
        f"{result['seconds']:.0f} s, {result['verdict']}",
        "",
        "| stage | status | seconds | result |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {s['name']} | {s['status']} | {s['seconds']} | {s['summary'].replace('|', chr(92) + '|')} |"
        for s in suite.stages
    ]
    for s in suite.stages:  # the memory planner's predictions beside what the device measured
        if s.get("predicted"):
            lines += ["", f"{s['name']}, per sample (genperf.plan's prediction beside the measurement):", ""]
            lines += [f"- {line}" for line in s["predicted"]]
    probe = probe_summary(suite, result)
    if probe:
        lines += ["", *probe]
        with open(os.path.join(out, "probe.md"), "w") as f:
            f.write("\n".join(probe) + "\n")
    with open(os.path.join(out, "selftest.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return result


TARGET_IMAGES_PER_S = 900  # RealNVP celeba64 with the recommended flags on one H100/H200


def probe_summary(suite, result):
    """One screen on the speed stages (benchmarks/gpu_probe.sh): the headline step's images/s by batch and flags
    beside plain PyTorch, the flags slower than it at the first batch, the audits, CUDA graphs."""
    stages = {s["name"]: s for s in suite.stages}
    speed = [s for s in ("throughput", "gan-speed", "cudagraphs") if stages.get(s, {}).get("rows")]
    if not speed and "audit" not in stages:
        return []
    lines = [f"## Speed on {result['device_name'] or suite.device}", ""]
    lines += [
        "| stage | config | batch | variant | images/s | vs plain fp32 | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in speed:
        for r in stages[name]["rows"]:
            lines.append(
                f"| {name} | {r['config']} | {r['batch']} | {r['variant']} | {float(r['images_per_s']):.1f} | "
                f"{float(r['speedup']):.2f}x | {100 * float(r['mfu']):.1f}% |"
            )
    lines.append("")
    headline = [
        r
        for r in stages.get("throughput", {}).get("rows", [])
        if r["variant"] == "all on" and "celeba64" in r["config"]
    ]
    if headline:
        best = max(headline, key=lambda r: float(r["images_per_s"]))
        met = "met" if float(best["images_per_s"]) >= TARGET_IMAGES_PER_S else "not met"
        lines.append(
            f"- {best['config']} with --amp --compile --channels-last: best {float(best['images_per_s']):.0f} "
            f"images/s at batch {best['batch']} (target {TARGET_IMAGES_PER_S} on one H100/H200: {met})"
        )
    measured = [r for name in ("throughput", "gan-speed") for r in stages.get(name, {}).get("rows", [])]
    first_batch = {}
    for r in measured:
        first_batch[r["config"]] = min(first_batch.get(r["config"], int(r["batch"])), int(r["batch"]))
    slower = [
        f"{r['config']} {r['variant']} {float(r['speedup']):.2f}x"
        for r in measured
        if int(r["batch"]) == first_batch[r["config"]] and float(r["speedup"]) < 1
    ]
    if measured:
        lines.append(
            f"- slower than plain PyTorch fp32 at each configuration's first batch: {', '.join(slower) or 'none'}"
        )
    if "audit" in stages:
        lines.append(f"- audits: {stages['audit']['summary']} (audit-MODEL.txt)")
    if os.path.isdir(os.path.join(suite.args.out, "profiles")):
        lines.append("- kernel tables of every variant: profiles/, a folder per stage")
    return lines


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(prog="python benchmarks/selftest.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for selftest.json and selftest.md")
    p.add_argument("--quick", action="store_true", help="small sizes and fewer repetitions")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument(
        "--budget-s",
        type=float,
        default=BUDGET_S,
        help=f"seconds for the whole run, a build included: later stages are skipped (default {BUDGET_S})",
    )
    p.add_argument(
        "--only",
        type=lambda v: v.split(","),
        default=[name for name, _ in STAGES],
        metavar="STAGE[,STAGE]",
        help="run these stages alone (after the build): " + ", ".join(name for name, _ in STAGES),
    )
    p.add_argument("--no-build", action="store_true", help="fail rather than build a missing extension")
    p.add_argument("--built-s", type=float, default=0, help=argparse.SUPPRESS)  # set by the re-run after a build
    args = p.parse_args(argv)
    unknown = set(args.only) - {name for name, _ in STAGES}
    if unknown:
        p.error(f"--only: no stage {', '.join(sorted(unknown))}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    suite = Suite(args)
    print(
        f"genperf selftest: {args.device}, torch {torch.__version__}, {'quick' if args.quick else 'full'}, "
        f"budget {args.budget_s:.0f} s, results in {args.out}",
        flush=True,
    )
    build = suite.run("build", lambda: stage_build(suite))
    if build["status"] == "fail":
        write_report(suite, args.out)
        return 1
    for name, needs in (s for s in STAGES if s[0] in args.only):
        stage = globals()["stage_" + name.replace("-", "_")]
        suite.run(name, lambda: stage(suite), needs)
    result = write_report(suite, args.out)
    print(
        f"genperf selftest: {result['verdict']} ({result['seconds']:.0f} s); {os.path.join(args.out, 'selftest.md')}",
        flush=True,
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
