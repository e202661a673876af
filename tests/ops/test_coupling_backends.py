"""Every fused backend of affine_coupling against the pure-torch reference, on GENPERF_TEST_DEVICE."""

import shutil
import subprocess

import pytest
import torch
from _device import BACKENDS, DEVICE, HAS_NATIVE, NATIVE

from genperf.layers import checkerboard_mask
from genperf.ops import affine_coupling, affine_coupling_ref, available_backends, use_backend

NO_NATIVE = f"genperf._C has no {NATIVE} kernels here"
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}  # atol on top of the error bound


def _bias(channels, seed=5):
    """A (2C,) fp32 bias of s_raw and t, as the s/t network's last conv hands it to the op."""
    return (torch.randn(2 * channels, generator=torch.Generator().manual_seed(seed)) * 0.5).to(DEVICE)


def _inputs(shape, dtype, mask_kind, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    s_raw = (torch.randn(shape, generator=g) * 2).to(dtype)  # reach tanh's flat parts too
    t = torch.randn(shape, generator=g).to(dtype)
    scale = torch.rand(shape[1], generator=g) + 0.5
    mask = {
        "none": None,
        "checkerboard": checkerboard_mask(shape[2], shape[3], flip=True),
        "per-element": (torch.rand(shape, generator=g) < 0.5).float(),
    }[mask_kind]
    x, s_raw, t, scale = (v.to(DEVICE) for v in (x, s_raw, t, scale))
    mask = None if mask is None else mask.to(DEVICE)
    if channels_last:
        x, s_raw, t = (v.contiguous(memory_format=torch.channels_last) for v in (x, s_raw, t))
    return x, s_raw, t, scale, mask


def _run(backend, x, s_raw, t, scale, mask, reverse, grad_y, grad_ld, bias=None):
    leaves = [v.detach().clone().requires_grad_(True) for v in (x, s_raw, t, scale, *([] if bias is None else [bias]))]
    with use_backend(backend):
        y, ld = affine_coupling(*leaves[:4], mask=mask, reverse=reverse, bias=None if bias is None else leaves[4])
    (y.float() * grad_y).sum().add((ld.float() * grad_ld).sum()).backward()
    return [y, ld] + [v.grad for v in leaves]


def _assert_within_bound(fused, lowp, exact, atol, name):
    """flash-attention's rule: |fused - exact| <= 2 |torch_lowp - exact| + atol, elementwise."""
    err = (fused.double() - exact).abs()
    bound = 2 * (lowp.double() - exact).abs() + atol * (1 + exact.abs())
    worst = (err - bound).max().item()
    assert worst <= 0, f"{name}: error exceeds the bound by {worst:.3g} (max error {err.max().item():.3g})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
# (9, 8, 3, 5): planes of 15 elements, 64 to a Triton program, the second program part-full; (2, 3, 33, 33):
# planes of 1,089 elements, two programs each
@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 5, 7, 9), (9, 8, 3, 5), (2, 3, 33, 33)])
@pytest.mark.parametrize("mask_kind", ["none", "checkerboard", "per-element"])
@pytest.mark.parametrize("reverse", [False, True])
def test_outputs_and_all_gradients_match_reference(backend, dtype, shape, mask_kind, reverse):
    _check_against_reference(backend, dtype, shape, mask_kind, reverse, bias=None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (9, 8, 3, 5)])
@pytest.mark.parametrize("mask_kind", ["none", "checkerboard"])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_bias_and_its_gradient_match_reference(backend, dtype, shape, mask_kind, reverse):
    _check_against_reference(backend, dtype, shape, mask_kind, reverse, bias=_bias(shape[1]))


def _check_against_reference(backend, dtype, shape, mask_kind, reverse, bias):
    x, s_raw, t, scale, mask = _inputs(shape, dtype, mask_kind)
    g = torch.Generator().manual_seed(1)
    grad_y, grad_ld = torch.randn(shape, generator=g).to(DEVICE), torch.randn(shape[0], generator=g).to(DEVICE)
    fused = _run(backend, x, s_raw, t, scale, mask, reverse, grad_y, grad_ld, bias)
    lowp = _run("reference", x, s_raw, t, scale, mask, reverse, grad_y, grad_ld, bias)
    exact = _run(
        "reference",
        *(v.double() for v in (x, s_raw, t, scale)),
        None if mask is None else mask.double(),
        reverse,
        grad_y.double(),
        grad_ld.double(),
        None if bias is None else bias.double(),
    )
    assert fused[0].dtype == dtype and fused[1].dtype == torch.float32
    names = ["y", "logdet", "dx", "ds_raw", "dt", "dscale", "dbias"]
    assert len(fused) == len(exact) == (6 if bias is None else 7)
    for name, f, lo, ex in zip(names, fused, lowp, exact):
        assert f.shape == ex.shape, name
        _assert_within_bound(f, lo, ex, TOL[dtype], name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_and_non_contiguous_inputs(backend):
    x, s_raw, t, scale, mask = _inputs((2, 6, 8, 8), torch.float32, "checkerboard", channels_last=True)
    g = torch.Generator().manual_seed(2)
    grad_y, grad_ld = torch.randn(x.shape, generator=g).to(DEVICE), torch.randn(2, generator=g).to(DEVICE)
    fused = _run(backend, x, s_raw, t, scale, mask, False, grad_y, grad_ld)
    ref = _run("reference", x.contiguous(), s_raw.contiguous(), t.contiguous(), scale, mask, False, grad_y, grad_ld)
    for f, r in zip(fused, ref):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
    # a strided view (every other channel) is handled too
    view = [v[:, ::2] for v in (x, s_raw, t)]
    with use_backend(backend):
        y, ld = affine_coupling(*view, scale[::2])
    y_ref, ld_ref = affine_coupling_ref(*view, scale[::2])
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, ld_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_channel_slices_of_one_st_tensor_are_read_in_place(backend, dtype, reverse, monkeypatch):
    """What AffineCoupling passes: s_raw, t = st.chunk(2, 1) and x a channel half of a larger tensor.
    The kernels read them where they lie (no copy is made) and agree with the reference."""
    g = torch.Generator().manual_seed(3)
    st = torch.randn(3, 10, 5, 7, generator=g).to(DEVICE, dtype).requires_grad_(True)
    whole = torch.randn(3, 10, 5, 7, generator=g).to(DEVICE, dtype).requires_grad_(True)
    scale = (torch.rand(5, generator=g) + 0.5).to(DEVICE).requires_grad_(True)
    grad_y, grad_ld = torch.randn(3, 5, 5, 7, generator=g).to(DEVICE), torch.randn(3, generator=g).to(DEVICE)
    copies = []
    real_contiguous = torch.Tensor.contiguous
    monkeypatch.setattr(
        torch.Tensor, "contiguous", lambda v, *a, **k: copies.append(v.shape) or real_contiguous(v, *a, **k)
    )
    results = {}
    for b in (backend, "reference"):
        copies.clear()
        with use_backend(b):
            y, ld = affine_coupling(whole.chunk(2, 1)[1], *st.chunk(2, 1), scale, reverse=reverse)
        if b == backend:
            assert not [shape for shape in copies if shape[0] == 3], copies  # no copy of x, s_raw or t
        grads = torch.autograd.grad((y.float() * grad_y).sum() + (ld * grad_ld).sum(), (st, whole, scale))
        results[b] = (y, ld, *grads)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for f, r in zip(results[backend], results["reference"]):
        torch.testing.assert_close(f.float(), r.float(), rtol=tol, atol=tol)


@pytest.mark.skipif(not HAS_NATIVE, reason=NO_NATIVE)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64_native_backend(reverse):
    x, s_raw, t, scale, mask = (
        v.double() if v is not None else v for v in _inputs((2, 3, 3, 4), torch.float32, "checkerboard")
    )
    leaves = [v.requires_grad_(True) for v in (x, s_raw, t, scale, _bias(3).double())]
    with use_backend(NATIVE):
        for n_leaves in (4, 5):  # without and with the fused bias
            assert torch.autograd.gradcheck(
                lambda *a: affine_coupling(*a[:4], mask=mask.double(), reverse=reverse, bias=(a[4:] or [None])[0]),
                leaves[:n_leaves],
            )
        y, ld = affine_coupling(*leaves[:4], mask=mask, reverse=reverse, bias=leaves[4])
    y_ref, ld_ref = affine_coupling_ref(*leaves[:4], mask=mask, reverse=reverse, bias=leaves[4])
    assert y.dtype == ld.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld, ld_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x, s_raw, t, scale, mask = _inputs((2, 3, 4, 4), torch.float32, "checkerboard")
    mask = mask.expand(1, 1, 4, 4).reshape(1, 1, 16).contiguous()  # the kernels' (1|N, 1|C, L) layout
    if backend == "triton":
        from genperf.ops.coupling_triton import triton_coupling as op
    else:
        op = torch.ops.genperf_kernels.affine_coupling
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if backend == "triton" and DEVICE.type == "cpu":
        # AOT dispatch traces the host function (what inductor compiles), whose wrap_triton launches need a GPU:
        # under the interpreter they would run on fake tensors.
        checks = tuple(c for c in checks if c != "test_aot_dispatch_dynamic")
    leaves = (x.requires_grad_(), s_raw.requires_grad_(), t.requires_grad_(), scale.requires_grad_())
    for reverse, bias in ((False, None), (True, None), (False, _bias(3).requires_grad_())):
        torch.library.opcheck(op.default, (*leaves, mask, bias, reverse), test_utils=checks)


@pytest.mark.skipif(not HAS_NATIVE, reason=NO_NATIVE)
def test_inference_mode_runs_the_kernel_below_autograd():
    x, s_raw, t, scale, mask = _inputs((2, 3, 4, 4), torch.float32, "checkerboard")
    with torch.inference_mode(), use_backend(NATIVE):
        y, ld = affine_coupling(x, s_raw, t, scale, mask)
    y_ref, ld_ref = affine_coupling_ref(x, s_raw, t, scale, mask)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, ld_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    if backend == "triton" and DEVICE.type == "cpu":
        pytest.skip("inductor compiles Triton code for GPUs only; the interpreter runs eager Triton")
    x, s_raw, t, scale, mask = _inputs((2, 4, 8, 8), torch.float32, "checkerboard")
    bias = _bias(4)

    def step(x, s_raw, t, scale, bias):
        y, ld = affine_coupling(x * 1.5, torch.sin(s_raw), t, scale, mask=mask, bias=bias)
        return y.square().mean() + ld.mean()

    with use_backend(backend):
        compiled = torch.compile(step, fullgraph=True)
        leaves = [v.detach().clone().requires_grad_(True) for v in (x, s_raw, t, scale, bias)]
        out = compiled(*leaves)
        out.backward()
    ref_leaves = [v.detach().clone().requires_grad_(True) for v in (x, s_raw, t, scale, bias)]
    with use_backend("reference"):
        ref = step(*ref_leaves)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_each_op_runs_its_fastest_measured_backend(monkeypatch, capsys):
    from genperf.ops import backends

    monkeypatch.setattr(backends, "RANKING", {"cpu": {"affine_coupling": (("reference", 1.0), ("cpu", 0.5))}})
    monkeypatch.setattr(backends, "_warned", set())
    cpu = torch.device("cpu")
    assert backends.select(cpu, "affine_coupling") == "reference"  # measured faster: chosen, not a fallback
    assert backends.select(cpu, "gradient_penalty") == ("cpu" if "cpu" in available_backends() else "reference")
    assert "cannot use its faster backends" not in capsys.readouterr().err
    line = backends.describe("cpu", ["affine_coupling"])
    assert line.startswith("fused ops on cpu: affine_coupling reference (1.00x eager)")
    with use_backend("reference"):
        assert (
            backends.describe("cpu", ["affine_coupling"]) == "fused ops on cpu: reference (forced) for affine_coupling"
        )


def test_a_faster_backend_that_cannot_run_is_said_once(monkeypatch, capsys):
    from genperf.ops import backends

    monkeypatch.setattr(backends, "RANKING", {"cpu": {"affine_coupling": (("cuda", 3.0), ("reference", 1.0))}})
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setitem(backends._REASONS, "cuda", "no CUDA device")
    for _ in range(2):
        assert backends.select(torch.device("cpu"), "affine_coupling") == "reference"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "genperf: affine_coupling cannot use its faster backends on cpu (cuda: no CUDA device); it runs reference"
    ]


@pytest.mark.skipif(not HAS_NATIVE, reason=NO_NATIVE)
def test_backend_selection_is_explicit():
    assert "reference" in available_backends()
    with pytest.raises(ValueError, match="unknown genperf backend"):
        with use_backend("opencl"):
            pass
    if "cuda" not in available_backends():
        with pytest.raises(RuntimeError, match="'cuda' cannot run here"):
            with use_backend("cuda"):
                pass
    if "cpu" in available_backends():
        with use_backend("cpu"), pytest.raises(RuntimeError, match="cannot run on meta tensors"):
            affine_coupling(*(torch.empty(1, 2, 2, 2, device="meta") for _ in range(3)), torch.ones(2, device="meta"))


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_cpu_kernels_inline_their_exp_and_tanh():
    """The CPU kernels' exp and tanh (csrc/cpu_math.h) are inlined into the vectorized loops: GCC once kept
    them out of line, a call per element that made the fused coupling 4-8x slower than eager torch. An
    exported genperf::vexp or genperf::vtanh in the built module is that regression."""
    from genperf import _C

    symbols = subprocess.run(
        ["nm", "-D", "-C", "--defined-only", _C.__file__], capture_output=True, text=True, check=True
    ).stdout
    assert "PyInit__C" in symbols  # nm read the module's symbols
    assert "genperf::vexp" not in symbols and "genperf::vtanh" not in symbols
