"""benchmarks/compile_kernels.py: the Triton launches it finds and one ahead-of-time compile for sm_90."""

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # compile_kernels imports bench_kernels beside it
_spec = importlib.util.spec_from_file_location(
    "compile_kernels", os.path.join(REPO, "benchmarks", "compile_kernels.py")
)
ck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ck)


def test_every_kernel_is_launched_in_every_dtype():
    launches = ck.recorded_launches()
    names = {fn.__name__ for fn, _, _ in launches}
    assert names == {"_coupling_fwd", "_coupling_bwd", "_interpolate", "_penalty", "_penalty_bwd"}
    coupling = [(args, kw) for fn, args, kw in launches if fn.__name__ == "_coupling_fwd"]
    assert {(a[0].dtype, a[1].dtype) for a, _ in coupling} == set(ck.COUPLING_DTYPES)
    assert {kw["HAS_MASK"] for _, kw in coupling} == {False, True} and {kw["REVERSE"] for _, kw in coupling} == {
        False,
        True,
    }
    assert len({kw["BLOCK"] for _, kw in coupling}) > 1  # the presets' planes pick different tiles


def test_a_launch_specializes_as_the_launcher_does():
    fn, args, kw = next(launch for launch in ck.recorded_launches() if launch[0].__name__ == "_coupling_fwd")
    signature, constants, attrs = ck.specialize(fn, args, kw)
    assert signature["x_ptr"] == "*" + ck.DTYPES[args[0].dtype] and signature["ROWS"] == "constexpr"
    assert constants["BLOCK"] == kw["BLOCK"] and (0,) in attrs  # pointers: 16-byte aligned


def test_one_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    """In a process without the Triton interpreter this suite runs under: compiling needs the real kernels."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    cmd = [sys.executable, ck.__file__, "--triton-only", "--arch", "80", "90", "--kernel", "_penalty"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert {(r["sm"], r["config"].split(";")[0].split("/")[0]) for r in rows} == {  # the gradient's dtype
        (sm, d) for sm in (80, 90) for d in ("fp32", "bf16", "fp16")
    }
    assert all(0 < r["registers"] <= 255 and r["local"] == 0 for r in rows), rows
