"""Every GPU kernel of genperf compiled for CUDA GPUs without one: registers, spills and shared memory per kernel.

    python benchmarks/compile_kernels.py [--arch 80 90] [--triton-only | --cuda-only] [--kernel NAME ...]
                                         [--json FILE]

Triton: the launches the wrappers of genperf.kernels make, at the RealNVP presets' coupling shapes (mnist,
celeba64: every dtype pair the coupling op passes, mask or not, both directions) and at the critic inputs of
the gradient penalty (1x28x28, 3x64x64; fp32, bf16, fp16). The wrappers run on meta tensors with each jitted
kernel replaced by a recorder, so ROWS, BLOCK and the argument types are the wrappers' own; each distinct
launch is compiled by triton.compile for each architecture (sm_80 A100, sm_90 H100/H200 by default), with the
argument specialization a launch gets (16-byte aligned pointers, integers divisible by 16, integers equal to 1).
CUDA: the kernels in genperf._C's fat binary (built with TORCH_CUDA_ARCH_LIST="8.0;9.0"), one row per kernel and
architecture. Resources are read with cuobjdump --dump-resource-usage (triton ships it) from the cubins.
Exits 1 on a failed compile, on a kernel that spills, or on a missing architecture.
"""

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# (x, s/t) dtypes the coupling op passes its kernels: the flow's state stays fp32 while an autocast s/t network
# gives bf16 or fp16, and the op also takes low-precision x (genperf.ops.coupling).
COUPLING_DTYPES = [(torch.float32, d) for d in DTYPES] + [(torch.bfloat16,) * 2, (torch.float16,) * 2]
CRITIC_INPUTS = [(1, 28, 28), (3, 64, 64)]
BATCH = 64


class Recorder:
    """Stands in for a jitted kernel: `kernel[grid](*args, **constexprs)` records the launch."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, args, kwargs))


def recorded_launches():
    """(kernel, args, constexprs) of every launch of the Triton wrappers at the presets' shapes."""
    from bench_kernels import coupling_shapes

    from genperf.kernels import coupling, gradient_penalty

    launches, kernels = [], []
    for module in (coupling, gradient_penalty):
        for name, value in vars(module).items():
            if type(value).__name__ in ("JITFunction", "InterpretedFunction"):  # the latter under TRITON_INTERPRET
                kernels.append((module, name, value))
    for module, name, fn in kernels:
        setattr(module, name, Recorder(fn, launches))
    meta = dict(device="meta")
    try:
        shapes = {s for arch in ("mnist", "celeba64") for s in coupling_shapes(arch, BATCH)}
        for (shape, masked), (xd, sd), reverse in itertools.product(shapes, COUPLING_DTYPES, (False, True)):
            x, r, t = torch.empty(shape, dtype=xd, **meta), *(torch.empty(shape, dtype=sd, **meta) for _ in "rt")
            scale = torch.empty(shape[1], dtype=torch.float32, **meta)
            mask = torch.empty(1, 1, x[0, 0].numel(), dtype=torch.float32, **meta) if masked else None
            bias = torch.empty(2 * shape[1], dtype=torch.float32, **meta)  # the model's couplings fuse their st bias
            _, logdet = coupling.coupling_forward(x, r, t, scale, mask, bias, reverse)
            coupling.coupling_backward(torch.empty_like(x), logdet, x, r, t, scale, mask, bias, reverse)
        for chw, dtype in itertools.product(CRITIC_INPUTS, DTYPES):
            n, length = BATCH, chw[0] * chw[1] * chw[2]
            real = torch.empty(n, length, dtype=dtype, **meta)
            gradient_penalty.interpolate(real, real, torch.empty(n, dtype=dtype, **meta))
            _, sumsq = gradient_penalty.penalty(real, 10.0, 1e-12)
            gradient_penalty.penalty_backward(torch.empty((), **meta), real, sumsq, 10.0, 1e-12)
    finally:
        for module, name, fn in kernels:
            setattr(module, name, fn)
    return launches


def specialize(fn, args, constexprs):
    """The signature, constants and attributes triton.compile gets for one launch, as the launcher specializes
    it: pointers 16-byte aligned (torch's allocations are), integers divisible by 16 marked so, integers equal
    to 1 made constants."""
    signature, constants, attrs = {}, dict(constexprs), {}
    for i, (name, arg) in enumerate(zip(fn.arg_names, args)):
        if isinstance(arg, torch.Tensor):
            signature[name], attrs[(i,)] = "*" + DTYPES[arg.dtype], [["tt.divisibility", 16]]
        elif isinstance(arg, bool) or arg == 1 and isinstance(arg, int):
            constants[name] = arg
        elif isinstance(arg, int):
            signature[name] = "i32" if -(2**31) <= arg < 2**31 else "i64"
            if arg % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    for name in constants:
        signature[name] = "constexpr"
    return {name: signature[name] for name in fn.arg_names}, constants, attrs


def launch_key(fn, args, constexprs):
    signature, constants, attrs = specialize(fn, args, constexprs)
    return fn.__name__, tuple(signature.items()), tuple(sorted(constants.items())), tuple(sorted(attrs))


def cuobjdump():
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def resource_usage(path):
    """{(kernel, sm): {"registers", "spill_stores", "spill_loads", "shared", "stack"}} of a cubin or fat binary."""
    out = subprocess.run([cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True, check=True)
    found, sm = {}, None
    for line in out.stdout.splitlines():
        arch = re.search(r"arch = sm_(\d+)", line)
        if arch:
            sm = int(arch.group(1))
        function = re.search(r"Function (\S+):", line)
        if function:
            name = function.group(1)
        usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if usage:
            registers, stack, shared, local = map(int, usage.groups())
            # Spills go to local memory: LOCAL > 0 is a spill (or a local array, which these kernels do not have)
            found[(name, sm)] = dict(registers=registers, stack=stack, shared=shared, local=local)
    return found


def compile_triton(archs, only=None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile_kernels: TRITON_INTERPRET=1 makes the kernels Python functions; unset it to compile them")
    launches = [launch for launch in recorded_launches() if only is None or launch[0].__name__ in only]
    distinct = {}
    for fn, args, constexprs in launches:
        distinct.setdefault(launch_key(fn, args, constexprs), (fn, args, constexprs))
    rows, folder = [], tempfile.mkdtemp(prefix="genperf-aot-")
    print(f"# triton {triton.__version__}: {len(launches)} launches, {len(distinct)} distinct, archs {archs}")
    for (name, signature, constants, _), (fn, args, constexprs) in sorted(distinct.items(), key=lambda kv: kv[0]):
        sig, consts, attrs = specialize(fn, args, constexprs)
        label = ", ".join(f"{k}={v}" for k, v in constants if k not in ("HAS_MASK",)) + (
            ", mask" if dict(constants).get("HAS_MASK") else ""
        )
        types = "/".join(dict.fromkeys(v[1:] for _, v in signature if v.startswith("*")))  # in argument order
        for arch in archs:
            row = dict(kind="triton", kernel=name, config=f"{types}; {label}", sm=arch)
            t0 = time.perf_counter()
            try:
                compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32))
            except Exception as e:  # noqa: BLE001  (any compile error is a result to report)
                row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                rows.append(row)
                continue
            path = os.path.join(folder, f"{name}-{len(rows)}.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            usage = next(iter(resource_usage(path).values()))
            row.update(usage, seconds=round(time.perf_counter() - t0, 2), shared=compiled.metadata.shared)
            rows.append(row)
    return rows


def cuda_rows(archs):
    """One row per kernel and architecture of genperf._C's CUDA fat binary."""
    from genperf import _C

    if not _C.has_cuda():
        print(f"# {_C.__file__} was built without CUDA kernels: they are not checked (see setup.py)")
        return []
    usage = sorted(resource_usage(_C.__file__).items(), key=lambda kv: (kv[0][1], kv[0][0]))
    names = demangle([name for (name, _), _ in usage])
    rows = [dict(kind="cuda", kernel=names[name], config="", sm=sm, **u) for (name, sm), u in usage]
    built = {r["sm"] for r in rows}
    rows += [
        dict(kind="cuda", kernel="genperf._C", sm=a, error=f"no sm_{a} code in the module")
        for a in archs
        if a not in built
    ]
    return rows


def demangle(names):
    """{mangled: short} for kernel symbols, in one c++filt call: "void genperf::(anonymous namespace)::kernel<float,
    ...>(args)" -> "kernel<float, ...>" (the mangled names where c++filt is missing)."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    short = [f.replace("void ", "").replace("(anonymous namespace)::", "").replace("genperf::", "") for f in out]
    return {n: (f.split("(")[0] or n) for n, f in zip(names, short)}


def verdict(row):
    if "error" in row:
        return "FAIL: " + row["error"]
    if row["local"] > 0:
        return f"FAIL: spills ({row['local']} bytes of local memory)"
    return "ok"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--triton-only", action="store_true")
    only.add_argument("--cuda-only", action="store_true")
    p.add_argument("--kernel", nargs="+", help="compile only these Triton kernels (e.g. _coupling_fwd)")
    p.add_argument("--json", help="write every row here too")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = ([] if args.cuda_only else compile_triton(args.arch, args.kernel)) + (
        [] if args.triton_only else cuda_rows(args.arch)
    )
    print(f"{'kind':6s} {'sm':>3s} {'regs':>4s} {'local':>5s} {'shared':>6s}  kernel; configuration  verdict")
    for r in rows:
        print(
            f"{r['kind']:6s} {r['sm']:3d} {r.get('registers', '-'):>4} {r.get('local', '-'):>5} "
            f"{r.get('shared', '-'):>6}  {r['kernel']}; {r.get('config', '')}  {verdict(r)}"
        )
    failed = [r for r in rows if verdict(r) != "ok"]
    compiled = [r for r in rows if "registers" in r]
    print(
        f"# {len(rows)} kernel builds, {len(failed)} failed; at most "
        f"{max((r['registers'] for r in compiled), default=0)} registers; {time.perf_counter() - t0:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
