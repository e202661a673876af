import pytest
import torch

from genperf.layers import checkerboard_mask
from genperf.ops import affine_coupling_ref


def _inputs(shape=(3, 5, 7, 9), dtype=torch.float64):
    x, s_raw, t = (torch.randn(shape, dtype=dtype) for _ in range(3))
    scale = torch.rand(shape[1], dtype=dtype) + 0.5
    return x, s_raw, t, scale


@pytest.mark.parametrize("masked", [False, True])
def test_reverse_inverts_forward_and_negates_logdet(masked):
    x, s_raw, t, scale = _inputs()
    mask = checkerboard_mask(7, 9, flip=False, device=x.device).double() if masked else None
    y, ld = affine_coupling_ref(x, s_raw, t, scale, mask)
    x_back, ld_back = affine_coupling_ref(y, s_raw, t, scale, mask, reverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld_back, -ld)
    if masked:  # the masked half passes through untouched
        torch.testing.assert_close(y * mask, x * mask, rtol=0, atol=0)


def test_logdet_equals_explicit_jacobian():
    x, s_raw, t, scale = _inputs((2, 2, 3, 3))
    mask = checkerboard_mask(3, 3, flip=True).double()
    _, ld = affine_coupling_ref(x, s_raw, t, scale, mask)
    for n in range(2):
        f = lambda v: affine_coupling_ref(v.view(1, 2, 3, 3), s_raw[n : n + 1], t[n : n + 1], scale, mask)[0].flatten()  # noqa: E731
        jac = torch.autograd.functional.jacobian(f, x[n].flatten())
        torch.testing.assert_close(ld[n], torch.linalg.slogdet(jac)[1])


def test_low_precision_inputs_accumulate_in_fp32():
    x, s_raw, t, scale = _inputs((4, 3, 8, 8), torch.float32)
    y, ld = affine_coupling_ref(x, s_raw.bfloat16(), t.bfloat16(), scale)
    y_ref, ld_ref = affine_coupling_ref(x, s_raw.bfloat16().float(), t.bfloat16().float(), scale)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(ld, ld_ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(s_raw=torch.randn(2, 3, 4, 5)), "s_raw has shape"),
        (dict(t=torch.randn(2, 3, 4)), "t has shape"),
        (dict(scale=torch.ones(4)), "scale has shape"),
        (dict(mask=torch.ones(1, 1, 5, 5)), "mask of shape"),
        (dict(x=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), "x must be a floating tensor"),
    ],
)
def test_bad_input_names_the_argument(bad, match):
    args = dict(
        x=torch.randn(2, 3, 4, 4),
        s_raw=torch.randn(2, 3, 4, 4),
        t=torch.randn(2, 3, 4, 4),
        scale=torch.ones(3),
        mask=None,
    )
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        affine_coupling_ref(**args)
