"""Fused-kernel microbenchmarks: every provider on the same inputs, in one run.

    python benchmarks/bench_kernels.py [--batches 64 256] [--dtypes float32 bfloat16] [--reps 20] [--csv FILE]
                                       [--markdown FILE]

Providers: the pure-torch reference (eager), torch.compile of the reference, and every genperf
backend that runs on this device (Triton only on a GPU: its CPU interpreter is a correctness tool).
Coupling shapes are those of the RealNVP presets (mnist, celeba64); the penalty runs on critic-input
gradients of MNIST and CelebA size. Prints median, p20-p80 spread, speedups, and GB/s with its fraction
of the peak bandwidth, measured in the same run as a large same-device copy (genperf.perf.copy_bandwidth), and
beside each provider's time the host cost of one of its calls: the same call on tensors of a few elements,
where the kernels have nothing to do (Python, dispatch, argument checks, allocations, launches).
A measurement whose p80 exceeds 1.5 x its p20 (a busy machine, timer steps) is marked noisy: its ratios
mean little. torch.compile starts afresh for every shape and mode, so none of its column falls back to
eager at dynamo's recompile limit (hitting it is an error here). --csv FILE appends one row per
measurement (benchmarks/results/kernels.csv holds the recorded runs); --markdown FILE appends one table, under a
line naming machine, date and commit (docs/kernels.md holds the recorded ones).
"""

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch

from genperf.layers import checkerboard_mask
from genperf.models import REALNVP_ARCHS, RealNVP
from genperf.ops import affine_coupling, affine_coupling_ref, available_backends, use_backend
from genperf.ops.gradient_penalty import NORM_EPS
from genperf.perf import append_csv, copy_bandwidth, machine
from genperf.precision import keep_freed_cpu_memory


def coupling_shapes(arch, batch):
    """(shape, masked) of every coupling call in a RealNVP preset, found by running a thin copy of it."""
    cfg = dict(REALNVP_ARCHS[arch], mid_channels=1, num_blocks=1)
    model, seen = RealNVP(**cfg), []
    for c in model.couplings():
        c.register_forward_hook(
            lambda mod, inp, out: seen.append(
                (
                    (batch, mod.channels if mod.mask_type == "checkerboard" else mod.channels // 2, *inp[0].shape[2:]),
                    mod.mask_type == "checkerboard",
                )
            )
        )
    with torch.no_grad():
        model(torch.rand(1, cfg["in_channels"], cfg["image_size"], cfg["image_size"]))
    return sorted(set(seen))


def timeit(fn, reps, device):
    """p20, p50, p80 of `reps` timed calls (after warm-up), in milliseconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10)
    return q[1], statistics.median(times), q[7]


def providers(device):
    out = {"eager": None, "compile": None}
    fused = [b for b in available_backends() if b != "reference"]
    if device.type == "cpu" or not torch.cuda.is_available():
        fused = [b for b in fused if b == "cpu"]
    else:
        fused = [b for b in fused if b in ("cuda", "triton")]
    return list(out) + fused


NOISY = 1.5  # p80 / p20 above which a measurement is marked noisy
RANKING_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "genperf", "ops", "measured.py"
)


def fresh_compile(fn):
    """torch.compile of `fn` with dynamo's caches emptied: each shape and mode compiles for itself."""
    torch._dynamo.reset()
    return torch.compile(fn)


def coupling_runs(shape, masked, device, dtype):
    """{(provider, mode): a call of the coupling} on random inputs of `shape`, every provider on the same ones. As in
    the model, the call takes the s/t network's last bias (the fused backends add it in their pass, the reference
    adds it as the convolution would)."""
    x, r, t = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    scale = torch.rand(shape[1], device=device) + 0.5
    bias = torch.randn(2 * shape[1], device=device)
    mask = checkerboard_mask(shape[2], shape[3], False, device) if masked else None
    leaves = [v.requires_grad_(True) for v in (x, r, t, scale, bias)]
    gy = torch.randn(shape, device=device, dtype=dtype)
    runs = {}
    for mode in ("fwd", "fwd+bwd"):
        for prov in providers(device):
            fn = (
                affine_coupling_ref
                if prov == "eager"
                else fresh_compile(affine_coupling_ref)
                if prov == "compile"
                else affine_coupling
            )

            def run(fn=fn, mode=mode, backend=prov if prov not in ("eager", "compile") else "reference"):
                with use_backend(backend):
                    if mode == "fwd":
                        with torch.no_grad():
                            return fn(*leaves[:4], mask, bias=leaves[4])
                    y, ld = fn(*leaves[:4], mask, bias=leaves[4])
                    # autograd.grad: no accumulation into .grad, as for the non-leaf inputs in a model
                    torch.autograd.grad([y, ld], leaves, [gy, torch.ones_like(ld)])

            runs[prov, mode] = run
    return runs


def host_costs(device, dtype, reps):
    """{(op, provider, mode): ms} of a call on tensors of a few elements, where the kernels have nothing to do: what
    one call costs the host (Python, dispatch, checks, allocation, launch)."""
    costs = {}
    for (prov, mode), run in coupling_runs((1, 2, 2, 2), True, device, dtype).items():
        costs["affine_coupling", prov, mode] = timeit(run, reps, device)[1]
    for prov, run in penalty_runs((1, 1, 2, 2), device, dtype).items():
        costs["gradient_penalty", prov, "fwd+bwd"] = timeit(run, reps, device)[1]
    return costs


def bench_coupling(device, batches, reps, dtype, rows, host):
    for arch in ("mnist", "celeba64"):
        for batch in batches:
            for shape, masked in coupling_shapes(arch, batch):
                runs = coupling_runs(shape, masked, device, dtype)
                numel, size = math.prod(shape), torch.empty((), dtype=dtype).element_size()
                for mode in ("fwd", "fwd+bwd"):
                    results = {prov: timeit(runs[prov, mode], reps, device) for prov in providers(device)}
                    elems = numel * (4 if mode == "fwd" else 11)  # tensors read + written
                    x = f"{arch} {'cb' if masked else 'ch'} {tuple(shape)}"
                    report(rows, "affine_coupling", x, mode, results, elems * size, device, dtype, host)


def bench_penalty(device, batches, reps, dtype, rows, host):
    """The fused part of WGAN-GP: interpolation, then the norm/penalty forward and backward on the
    critic's input gradient (the critic's own double backward is the same torch code for all)."""

    for name, shape in (("mnist", (1, 28, 28)), ("celeba64", (3, 64, 64))):
        for batch in batches:
            runs = penalty_runs((batch, *shape), device, dtype)
            results = {prov: timeit(run, reps, device) for prov, run in runs.items()}
            # interpolate: 2 read + 1 write; penalty: 1 read fwd, 1 read + 1 write bwd
            nbytes = 6 * batch * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            report(
                rows, "gradient_penalty", f"{name} {(batch, *shape)}", "fwd+bwd", results, nbytes, device, dtype, host
            )


def _penalty_ref(real, fake, eps, grad):
    e = eps.view(-1, *([1] * (real.dim() - 1)))
    x_hat = e * real + (1 - e) * fake
    norm = torch.sqrt(grad.float().flatten(1).pow(2).sum(1) + NORM_EPS)
    return x_hat, 10.0 * (norm - 1).pow(2).mean()


def penalty_runs(shape, device, dtype):
    """{provider: a call of the penalty's fused part} on random inputs of `shape`."""
    real, fake = (torch.randn(shape, device=device, dtype=dtype) for _ in range(2))
    eps = torch.rand(shape[0], device=device, dtype=dtype)
    grad = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    runs = {}
    for prov in providers(device):
        if prov in ("eager", "compile"):
            f = _penalty_ref if prov == "eager" else fresh_compile(_penalty_ref)

            def run(f=f):
                _, pen = f(real, fake, eps, grad)
                torch.autograd.grad(pen, grad)
        else:

            def run(prov=prov):
                torch.ops.genperf.gp_interpolate(real, fake, eps, prov)
                pen, _ = torch.ops.genperf.gp_penalty(grad, 10.0, prov)
                torch.autograd.grad(pen, grad)

        runs[prov] = run
    return runs


def report(rows, op, x, mode, results, nbytes, device, dtype, host):
    eager, comp = results["eager"][1], results.get("compile", (None, None))[1]
    peak = copy_bandwidth(device.type) / 1e9
    noisy = {prov for prov, (p20, _, p80) in results.items() if p80 > NOISY * p20}
    for prov, (p20, p50, p80) in results.items():
        gbps = nbytes / p50 / 1e6 if nbytes else None
        own_host = host.get((op, prov, mode))
        line = f"{op:18s} {x:38s} {mode:7s} {prov:8s} {p50:9.3f} ms [{p20:.3f}-{p80:.3f}]"
        line += f" (host {own_host:.3f})" if own_host is not None else ""
        line += f"  x{eager / p50:5.2f} vs eager"
        if comp:
            line += f"  x{comp / p50:5.2f} vs compile"
        if gbps:
            line += f"  {gbps:7.1f} GB/s ({100 * gbps / peak:.0f}% of the copy)"
        if noisy & {prov, "eager", "compile"}:  # its own timing or a baseline of its ratios
            line += f"  NOISY ({', '.join(sorted(noisy))})"
        print(line, flush=True)
        rows.append(
            dict(
                op=op,
                provider=prov,
                mode=mode,
                metric="ms",
                x=x,
                dtype=str(dtype).replace("torch.", ""),
                p50=p50,
                p20=p20,
                p80=p80,
                device=torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
                version=torch.__version__,
                time=datetime.datetime.now().isoformat(timespec="seconds"),
                gbps=gbps,
                peak_gbps=peak,
                noisy=prov in noisy,
                host_ms=own_host,
            )
        )


def device_name(device):
    return torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"


def markdown(rows, stamp):
    """One table: a row per op, shape and mode, a column per provider (median ms, and x eager)."""
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    lines = [
        f"Kernel medians in ms (and speed-up over eager) on {stamp} (`python benchmarks/bench_kernels.py`).",
        "",
        "| op | input | mode | " + " | ".join(provs) + " |",
        "|---|---|---|" + "---|" * len(provs),
    ]
    cases = {}
    for r in rows:
        cases.setdefault((r["op"], f"{r['x']} {r['dtype']}", r["mode"]), {})[r["provider"]] = r
    for (op, x, mode), by_prov in cases.items():
        eager = by_prov["eager"]["p50"]
        cells = [
            f"{by_prov[p]['p50']:.3f} ({eager / by_prov[p]['p50']:.2f}x)" + (" noisy" if by_prov[p]["noisy"] else "")
            if p in by_prov
            else ""
            for p in provs
        ]
        lines.append(f"| {op} | {x} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranking(rows):
    """{op: ((backend, speed-up over eager), ...) fastest first} from `rows`: each fused backend's and the
    reference's geometric-mean speed-up over eager (1.0 for the reference itself) across every forward + backward
    measurement of the op; torch.compile of the reference is not a backend (it is what --compile does)."""
    eager = {
        (r["op"], r["x"], r["dtype"]): r["p50"] for r in rows if r["provider"] == "eager" and r["mode"] == "fwd+bwd"
    }
    speedups = {}
    for r in rows:
        if r["mode"] == "fwd+bwd" and r["provider"] != "compile":
            name = "reference" if r["provider"] == "eager" else r["provider"]
            speedups.setdefault(r["op"], {}).setdefault(name, []).append(eager[r["op"], r["x"], r["dtype"]] / r["p50"])
    return {
        op: tuple(
            sorted(
                ((name, round(math.exp(statistics.fmean(map(math.log, v))), 2)) for name, v in by.items()),
                key=lambda item: -item[1],
            )
        )
        for op, by in speedups.items()
    }


def write_ranking(path, device_type, ranked, source):
    """Replaces `device_type`'s entries of genperf/ops/measured.py (at `path`), keeping the other devices'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("measured", path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    table, sources = dict(old.RANKING, **{device_type: ranked}), dict(old.SOURCE, **{device_type: source})
    head = open(path).read().split("# device type -> op ->")[0]
    lines = [head + "# device type -> op -> ((backend, speed-up over eager torch), ...), fastest first", "RANKING = {"]
    for dev in sorted(table):
        lines.append(f"    {json.dumps(dev)}: {{")
        for op, entries in sorted(table[dev].items()):
            pairs = [f"({json.dumps(name)}, {speed!r})" for name, speed in entries]
            lines.append(f"        {json.dumps(op)}: ({', '.join(pairs)}{',' if len(pairs) == 1 else ''}),")
        lines.append("    },")
    lines += ["}", "# device type -> where and when its entries were measured", "SOURCE = {"]
    lines += [f"    {json.dumps(dev)}: {json.dumps(text)}," for dev, text in sorted(sources.items())]
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument(
        "--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"], help="each in turn"
    )
    p.add_argument("--only", choices=["coupling", "penalty"], help="run one part only")
    p.add_argument("--csv", help="append the measurements to this CSV file (default: print only)")
    p.add_argument("--markdown", help="append the table to this file, under a line naming machine, date and commit")
    p.add_argument(
        "--rank",
        nargs="?",
        const=RANKING_FILE,
        metavar="FILE",
        help="write this device type's measured backend ranking, which genperf.train picks from (default "
        "genperf/ops/measured.py)",
    )
    args = p.parse_args(argv)
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never time eager under the "compile" label
    device, dtypes = torch.device(args.device), [getattr(torch, d) for d in args.dtypes]
    kept = device.type == "cpu" and keep_freed_cpu_memory()  # as genperf.train does; helps every provider alike
    print(
        f"# {device} ({device_name(device)}), "
        f"torch {torch.__version__}, {', '.join(args.dtypes)}, providers: {', '.join(providers(device))}"
        + (", freed CPU memory kept for reuse (genperf.precision.keep_freed_cpu_memory)" if kept else "")
        + f"; copy bandwidth (read + write) {copy_bandwidth(device.type) / 1e9:.0f} GB/s",
        flush=True,
    )
    rows = []
    for dtype in dtypes:
        host = host_costs(device, dtype, args.reps)
        print(
            f"# {str(dtype)[6:]}: host cost of one call (fwd+bwd on a few elements, the kernels idle): "
            + ", ".join(f"{op} {prov} {ms:.3f} ms" for (op, prov, mode), ms in host.items() if mode == "fwd+bwd"),
            flush=True,
        )
        if args.only in (None, "coupling"):
            bench_coupling(device, args.batches, args.reps, dtype, rows, host)
        if args.only in (None, "penalty"):
            bench_penalty(device, args.batches, args.reps, dtype, rows, host)
    noisy = sum(r["noisy"] for r in rows)
    if noisy:
        print(
            f"# warning: {noisy} of {len(rows)} measurements are noisy (p80 > {NOISY} x p20): their ratios are "
            f"unreliable; rerun on a quiet machine or with more --reps",
            flush=True,
        )
    if args.csv:
        append_csv(args.csv, rows)
        print(f"# {len(rows)} rows appended to {args.csv}")
    if args.rank:
        from bench_quality import commit

        ranked = ranking(rows)
        source = f"{machine(device)}, {datetime.date.today().isoformat()}, commit {commit()}, batches "
        source += f"{', '.join(map(str, args.batches))}, {', '.join(args.dtypes)}"
        write_ranking(args.rank, device.type, ranked, source)
        print(f"# ranking for {device.type} written to {args.rank}: {ranked}")
    if args.markdown:
        from bench_quality import commit

        where = machine(device)
        stamp = (
            f"{where}, {datetime.date.today().isoformat()}, commit {commit()}, torch {torch.__version__}, "
            f"{', '.join(args.dtypes)}"
        )
        with open(args.markdown, "a") as f:  # one section per run of this script
            f.write(markdown(rows, stamp) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
