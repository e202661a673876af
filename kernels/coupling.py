"""RealNVP affine coupling + log-determinant in Triton: one pass forward, one pass backward.

Tensors are (N, C, ...), read as (N, C, L): outputs contiguous, inputs with every sample contiguous but
samples any stride apart (a channel slice st[:, :C] is read in place). One program handles a (ROWS, BLOCK) tile:
ROWS consecutive (n, c) planes times BLOCK elements of each, so small planes (7x7, 8x8 at a flow's last scale)
share a program instead of each masking most of a 1024-wide block; each row's log-det / scale-gradient partial
is one atomic add. The s/t network's last bias (one per channel of s_raw and of t) is added here instead of in a
pass of its own, and its gradient is summed here too. tanh and exp are recomputed in the backward, nothing is saved.
"""

import torch
import triton
import triton.language as tl

TILE = 1024  # elements per program


def _launch(planes, length):
    """(grid, ROWS, BLOCK) for `planes` planes of `length` elements: BLOCK covers a plane where it fits, ROWS fill
    the tile."""
    block = min(TILE, triton.next_power_of_2(max(length, 1)))
    rows = TILE // block
    return (triton.cdiv(planes, rows), triton.cdiv(length, block)), rows, block


@triton.jit
def _tanh(r):
    return 1.0 - 2.0 / (tl.exp(2.0 * r) + 1.0)


@triton.jit
def _block(P, C, L, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's planes (ROWS,), their sample n and channel c, element offsets (ROWS, BLOCK) into the
    (N, C, L) outputs, in-plane offsets (BLOCK,), the in-bounds mask (ROWS, BLOCK) and the valid rows (ROWS,)."""
    planes = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    rows = planes < P
    inb = rows[:, None] & (offs < L)[None, :]
    return planes // C, planes % C, planes.to(tl.int64)[:, None] * L + offs[None, :], offs, inb, rows


@triton.jit
def _load(ptr, idx, inb):
    return tl.load(ptr + idx, mask=inb, other=0.0).to(tl.float32)


@triton.jit
def _load_input(ptr, n, sample_stride, c, L, offs, inb):
    """Planes (n, c) of an input whose samples are `sample_stride` elements apart."""
    return _load(ptr + (n.to(tl.int64) * sample_stride + c.to(tl.int64) * L)[:, None], offs[None, :], inb)


@triton.jit
def _load_keep(mask_ptr, n, mask_sn, c, mask_sc, offs, inb):
    """1 - mask: where the coupling transforms."""
    return 1.0 - tl.load(mask_ptr + (n * mask_sn + c * mask_sc)[:, None] + offs[None, :], mask=inb, other=1.0)


@triton.jit
def _channel(ptr, c, rows):
    """The (ROWS, 1) per-channel values of this program's planes."""
    return tl.load(ptr + c, mask=rows, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _coupling_fwd(
    x_ptr,
    r_ptr,
    t_ptr,
    scale_ptr,
    bias_ptr,
    mask_ptr,
    y_ptr,
    logdet_ptr,
    P,
    C,
    L,
    sx,
    sr,
    st,
    mask_sn,
    mask_sc,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    REVERSE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n, c, idx, offs, inb, rows = _block(P, C, L, ROWS, BLOCK)
    x = _load_input(x_ptr, n, sx, c, L, offs, inb)
    r = _load_input(r_ptr, n, sr, c, L, offs, inb)
    t = _load_input(t_ptr, n, st, c, L, offs, inb)
    if HAS_BIAS:
        r += _channel(bias_ptr, c, rows)
        t += _channel(bias_ptr, C + c, rows)
    s = _channel(scale_ptr, c, rows) * _tanh(r)
    if HAS_MASK:
        keep = _load_keep(mask_ptr, n, mask_sn, c, mask_sc, offs, inb)
        s = s * keep
        t = t * keep
    if REVERSE:
        y = (x - t) * tl.exp(-s)
    else:
        y = x * tl.exp(s) + t
    tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=inb)
    part = tl.sum(tl.where(inb, s, 0.0), axis=1)
    tl.atomic_add(logdet_ptr + n, -part if REVERSE else part, mask=rows)


@triton.jit
def _coupling_bwd(
    gy_ptr,
    gl_ptr,
    x_ptr,
    r_ptr,
    t_ptr,
    scale_ptr,
    bias_ptr,
    mask_ptr,
    dx_ptr,
    dr_ptr,
    dt_ptr,
    dscale_ptr,
    dbias_ptr,
    P,
    C,
    L,
    sx,
    sr,
    st,
    mask_sn,
    mask_sc,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    REVERSE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n, c, idx, offs, inb, rows = _block(P, C, L, ROWS, BLOCK)
    gy = _load(gy_ptr, idx, inb)
    x = _load_input(x_ptr, n, sx, c, L, offs, inb)
    r = _load_input(r_ptr, n, sr, c, L, offs, inb)
    t = _load_input(t_ptr, n, st, c, L, offs, inb)
    if HAS_BIAS:
        r += _channel(bias_ptr, c, rows)
        t += _channel(bias_ptr, C + c, rows)
    gl = tl.load(gl_ptr + n, mask=rows, other=0.0).to(tl.float32)[:, None]
    sc = _channel(scale_ptr, c, rows)
    th = _tanh(r)
    keep = 1.0
    if HAS_MASK:
        keep = _load_keep(mask_ptr, n, mask_sn, c, mask_sc, offs, inb)
    s = sc * th * keep
    if REVERSE:
        e = tl.exp(-s)
        dx = gy * e
        dt = -dx * keep
        ds = -(gy * (x - t * keep) * e + gl) * keep
    else:
        e = tl.exp(s)
        dx = gy * e
        dt = gy * keep
        ds = (gy * x * e + gl) * keep
    dr = ds * sc * (1.0 - th * th)
    tl.store(dx_ptr + idx, dx.to(dx_ptr.dtype.element_ty), mask=inb)
    tl.store(dr_ptr + idx, dr.to(dr_ptr.dtype.element_ty), mask=inb)
    tl.store(dt_ptr + idx, dt.to(dt_ptr.dtype.element_ty), mask=inb)
    tl.atomic_add(dscale_ptr + c, tl.sum(tl.where(inb, ds * th, 0.0), axis=1), mask=rows)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + c, tl.sum(tl.where(inb, dr, 0.0), axis=1), mask=rows)
        tl.atomic_add(dbias_ptr + C + c, tl.sum(tl.where(inb, dt, 0.0), axis=1), mask=rows)


def _mask_args(mask, x):
    if mask is None:
        return x, 0, 0  # any pointer: HAS_MASK=False never reads it
    n_m, c_m, length = mask.shape
    return mask, (c_m * length if n_m > 1 else 0), (length if c_m > 1 else 0)


def _plane(x):
    n, c = x.shape[:2]
    return n, c, (x.numel() // (n * c) if n * c else 0)


def _sample_strides(*tensors):
    """Elements between consecutive samples of each (N, C, ...) input (planes must be contiguous)."""
    return [v.stride(0) for v in tensors]


def _empty(x):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _as_is(kernel):
    return kernel


def coupling_forward(x, r, t, scale, mask, bias, reverse, wrap=_as_is):
    """x, r, t: (N, C, ...), every sample contiguous (L elements per (n, c) plane); scale: (C,) fp32;
    mask: None or (1|N, 1|C, L) fp32 contiguous; bias: None or (2C,) fp32, added to r (first C) and t.
    y is contiguous. `wrap(kernel)` is what is launched: torch.library.wrap_triton makes the launch
    visible to torch.compile."""
    n, c, length = _plane(x)
    y = _empty(x)
    logdet = torch.zeros(n, device=x.device, dtype=torch.float32)
    m, msn, msc = _mask_args(mask, x)
    grid, rows, block = _launch(n * c, length)
    wrap(_coupling_fwd)[grid](
        x,
        r,
        t,
        scale,
        x if bias is None else bias,
        m,
        y,
        logdet,
        n * c,
        c,
        length,
        *_sample_strides(x, r, t),
        msn,
        msc,
        HAS_MASK=mask is not None,
        HAS_BIAS=bias is not None,
        REVERSE=reverse,
        ROWS=rows,
        BLOCK=block,
    )
    return y, logdet


def coupling_backward(grad_y, grad_logdet, x, r, t, scale, mask, bias, reverse, wrap=_as_is):
    """grad_y contiguous; the other inputs as in coupling_forward. The gradients are contiguous; the bias's is
    (0,) without a bias."""
    n, c, length = _plane(x)
    dx, dr, dt = _empty(x), _empty(r), _empty(t)
    dscale = torch.zeros(c, device=x.device, dtype=torch.float32)
    dbias = torch.zeros(0 if bias is None else 2 * c, device=x.device, dtype=torch.float32)
    m, msn, msc = _mask_args(mask, x)
    grid, rows, block = _launch(n * c, length)
    wrap(_coupling_bwd)[grid](
        grad_y,
        grad_logdet,
        x,
        r,
        t,
        scale,
        x if bias is None else bias,
        m,
        dx,
        dr,
        dt,
        dscale,
        dscale if bias is None else dbias,
        n * c,
        c,
        length,
        *_sample_strides(x, r, t),
        msn,
        msc,
        HAS_MASK=mask is not None,
        HAS_BIAS=bias is not None,
        REVERSE=reverse,
        ROWS=rows,
        BLOCK=block,
    )
    return dx, dr, dt, dscale, dbias
