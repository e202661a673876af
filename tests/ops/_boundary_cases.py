"""The bad-argument cases of tests/ops/test_boundary.py, run in a child process: `python _boundary_cases.py
DEVICE NAME...` calls each named case's raw op and prints one line per case as it ends (RAISED with the error's
first line, or RETURNED), after a STARTED line, so that the parent can tell which case a crash happened in."""

import sys

import torch

from genperf import _C  # noqa: F401  (registers torch.ops.genperf_kernels)


def cases(device):
    """name -> (a call with one bad argument, a regex its error must match). CROSS_DEVICE cases need a GPU."""
    k = torch.ops.genperf_kernels

    def t(*shape, dtype=torch.float32, on=device):
        return torch.randn(*shape, dtype=dtype, device=on)

    x, ones, rows, n = t(2, 3, 16), torch.ones(3, device=device), t(4, 10), torch.ones(4, device=device)
    fwd = k.coupling_forward
    found = {
        "coupling x without channels": (
            lambda: fwd(t(5), t(5), t(5), ones, None, None, False),
            r"x must be \(N, C, ...\)",
        ),
        "coupling s_raw shape": (lambda: fwd(x, t(2, 3, 15), x, ones, None, None, False), "s_raw has shape"),
        "coupling t shape": (lambda: fwd(x, x, t(2, 4, 16), ones, None, None, False), "t has shape"),
        "coupling t dtype": (
            lambda: fwd(x, x, t(2, 3, 16, dtype=torch.float64), ones, None, None, False),
            "t is .*s_raw is",
        ),
        "coupling scale shape": (
            lambda: fwd(x, x, x, torch.ones(4, device=device), None, None, False),
            r"scale must be \(3,\)",
        ),
        "coupling scale dtype": (
            lambda: fwd(x, x, x, ones.double(), None, None, False),
            "scale must be a contiguous Float tensor",
        ),
        "coupling mask shape": (
            lambda: fwd(x, x, x, ones, torch.ones(1, 1, 8, device=device), None, False),
            "mask must be",
        ),
        "coupling mask dtype": (
            lambda: fwd(x, x, x, ones, torch.ones(1, 1, 16, device=device, dtype=torch.float64), None, False),
            "mask must be a contiguous float32",
        ),
        "coupling s_raw strided": (
            lambda: fwd(x, t(2, 16, 3).transpose(1, 2), x, ones, None, None, False),
            "s_raw must be contiguous within each sample",
        ),
        "coupling bias shape": (
            lambda: fwd(x, x, x, ones, None, torch.ones(3, device=device), False),
            r"bias must be a contiguous \(6,\)",
        ),
        "coupling bias dtype": (
            lambda: fwd(x, x, x, ones, None, torch.ones(6, device=device, dtype=torch.float64), False),
            r"bias must be a contiguous \(6,\) Float",
        ),
        "coupling_backward grad_y shape": (
            lambda: k.coupling_backward(t(2, 3, 15), t(2), x, x, x, ones, None, None, False),
            "grad_y must match x",
        ),
        "coupling_backward grad_logdet dtype": (
            lambda: k.coupling_backward(x, t(2, dtype=torch.float64), x, x, x, ones, None, None, False),
            r"grad_logdet must be a contiguous \(2,\) Float",
        ),
        "gp_interpolate fake shape": (lambda: k.gp_interpolate(rows, t(4, 9), t(4)), "fake has shape"),
        "gp_interpolate eps shape": (lambda: k.gp_interpolate(rows, rows, t(3)), r"eps must be a contiguous \(4,\)"),
        "gp_penalty grad rank": (lambda: k.gp_penalty(t(4, 2, 5), 10.0, 1e-12), r"grad must be \(N, L\)"),
        "gp_penalty_backward sumsq": (
            lambda: k.gp_penalty_backward(t(1), rows, t(3), 10.0, 1e-12),
            r"sumsq must be a contiguous \(4,\)",
        ),
        "gp_penalty_backward grad_out": (
            lambda: k.gp_penalty_backward(t(2), rows, n, 10.0, 1e-12),
            "grad_out must be one float32 value",
        ),
    }
    if torch.device(device).type == "cuda":  # a tensor on the CPU among CUDA ones: the CUDA kernel must refuse it
        found["coupling x on the cpu"] = (
            lambda: fwd(t(2, 3, 16, on="cpu"), x, x, ones, None, None, False),
            "x is on cpu",
        )
        found["coupling s_raw on the cpu"] = (
            lambda: fwd(x, t(2, 3, 16, on="cpu"), x, ones, None, None, False),
            "s_raw is on cpu",
        )
        found["coupling bias on the cpu"] = (
            lambda: fwd(x, x, x, ones, None, torch.ones(6), False),
            "bias is on cpu",
        )
        found["gp_interpolate eps on the cpu"] = (lambda: k.gp_interpolate(rows, rows, t(4, on="cpu")), "eps is on cpu")
    return found


def main(device, names):
    found = cases(device)
    for name in names:
        print(f"STARTED {name}", flush=True)
        try:
            found[name][0]()
        except RuntimeError as e:
            print(f"RAISED {name}\t{str(e).splitlines()[0]}", flush=True)
        else:
            print(f"RETURNED {name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
