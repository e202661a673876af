"""Backprop through a chain of couplings without keeping their activations (RealNVP's --invertible).

Standard backprop keeps every coupling's s/t-network activations until backward. Here the forward
runs without recording a graph and keeps only the chain's output; backward walks the chain from the
end, rebuilding each coupling's input from its output with the exact inverse, then re-running that
one coupling with a graph and backpropagating through it (the reversible-network trick of Gomez et
al. 2017, with the log-determinant carried along). Activation memory is that of one coupling,
whatever the depth; the price is one inverse and one extra forward per coupling.

Parameter gradients are accumulated into .grad by the inner backward, as in any backward; FSDP2's
hooks see an ordinary forward and backward of each coupling and shard them as usual.
"""

from __future__ import annotations

import contextlib

import torch

from genperf.compiled import batch_dynamic
from genperf.layers import recomputing


class _InvertibleChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, anchor, couplings, device_type):
        # Function.forward runs without a graph: only the output is kept.
        ctx.couplings, ctx.device_type = couplings, device_type
        # The backward re-runs the couplings under the forward's autocast state (the meta device of
        # genperf.trainer.step_cost has none).
        ctx.autocast = (
            contextlib.nullcontext()
            if device_type == "meta"
            else torch.autocast(
                device_type,
                dtype=torch.get_autocast_dtype(device_type),
                enabled=torch.is_autocast_enabled(device_type),
            )
        )
        x, logdet = chain(couplings, x)
        ctx.save_for_backward(x)
        return x, logdet

    @staticmethod
    def backward(ctx, grad_y, grad_logdet):
        (y,) = ctx.saved_tensors
        y = y.detach()
        # Inverse and re-run normalise with the forward's batch statistics, without counting them again.
        with ctx.autocast, recomputing():
            for c in reversed(ctx.couplings):
                with torch.no_grad():
                    x, _ = c(y, reverse=True)
                x = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    y_again, ld = c(x)
                # Every coupling's log-det enters the chain's sum once, so each gets grad_logdet.
                torch.autograd.backward([y_again, ld], [grad_y, grad_logdet])
                grad_y, y = x.grad, x.detach()
        return grad_y, None, None, None


def chain(couplings, x):
    """(y, logdet) of the couplings applied in order, with ordinary autograd."""
    logdet = 0
    for c in couplings:
        x, ld = c(batch_dynamic(x))  # a compiled coupling (--checkpointing coupling) serves every batch size
        logdet = logdet + ld
    return x, logdet


def invertible_chain(couplings, x):
    """chain(couplings, x), backpropagated by inversion (see above). Outside autograd (no_grad) it is
    the plain chain."""
    couplings = tuple(couplings)
    if not torch.is_grad_enabled():
        return chain(couplings, x)
    # The data entering a flow needs no gradient; this leaf makes autograd call backward anyway.
    anchor = torch.empty(0, device=x.device, requires_grad=True)
    return _InvertibleChain.apply(x, anchor, couplings, x.device.type)
