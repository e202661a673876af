"""Adam's step and gradient clipping over FSDP2's sharded parameters, computed on each rank's local shards.

FSDP2 keeps parameters, gradients and Adam's moments as DTensors. torch's fused Adam and clip_grad_norm_ run on
them through DTensor's dispatch of list ops over every tensor, a cost per tensor that a model of many small
tensors pays each step (pytorch/pytorch#134191): RealNVP at 14x14 has 390 of them, and on two gloo ranks of a
2-core Xeon its Adam step took 8.9 ms on the DTensors against 2.1 ms for the same fused op on their local shards,
and clipping 5.7 ms against 1.8 ms. Both here run the same arithmetic on the local shards: Adam's state stays
the DTensors torch creates (checkpoints save and reshard them as ever), and the clip's one collective is the
all-reduce of the squared norm that DTensor makes too."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_sharded(tensors):
    """Whether every tensor is a DTensor sharded (never replicated) over one mesh of one dimension: then the
    local tensors together hold each element once, as FSDP2 lays its parameters and gradients out."""
    if not tensors or not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    if not all(isinstance(t, DTensor) for t in tensors):
        return False
    mesh = tensors[0].device_mesh
    return mesh.ndim == 1 and all(t.device_mesh == mesh and t.placements[0].is_shard() for t in tensors)


def _local(tensors):
    return [t._local_tensor for t in tensors]


def _by_device_and_dtype(tensors):
    """Indices of `tensors` by device and dtype, the lists a fused kernel takes."""
    keys = {}
    for i, t in enumerate(tensors):
        keys.setdefault((t.device, t.dtype), []).append(i)
    return keys.values()


def on_shards(params):
    """Whether `params` (tensors, or param groups as an optimizer takes them) are all FSDP2 shards."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [p for group in params for p in group["params"]]
    return _all_sharded(params)


class ShardedAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) over FSDP2's sharded parameters (on_shards), whose step applies torch's fused
    Adam kernel to the local shards: the same kernel on the same numbers, torch's result bit for bit. With a
    closure, or under a GradScaler (fp16; it sets grad_scale and found_inf), it is torch's own step."""

    def __init__(self, params, lr, betas):
        super().__init__(params, lr=lr, betas=betas, fused=True)

    @torch.no_grad()
    def step(self, closure=None):
        amp_scaling = getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None
        if closure is not None or amp_scaling:
            return super().step(closure)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = lists = ([], [], [], [], [], [])
            self._init_group(group, *lists)  # the state made on first use, as torch makes it
            for idx in _by_device_and_dtype(params):
                pick = lambda tensors: [tensors[i] for i in idx] if tensors else []  # noqa: E731
                torch._foreach_add_(pick(steps), 1)
                torch._fused_adam_(
                    _local(pick(params)),
                    _local(pick(grads)),
                    _local(pick(exp_avgs)),
                    _local(pick(exp_avg_sqs)),
                    _local(pick(max_exp_avg_sqs)),  # empty without amsgrad
                    pick(steps),
                    amsgrad=group["amsgrad"],
                    lr=group["lr"],
                    beta1=group["betas"][0],
                    beta2=group["betas"][1],
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                )
        return None


def clip_grad_norm_(params, max_norm):
    """torch.nn.utils.clip_grad_norm_(params, max_norm): the 2-norm of all gradients, which are scaled down to
    `max_norm` where it is larger. Over FSDP2's sharded gradients it sums the squares of the local shards and
    all-reduces that one number. Returns the total norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not _all_sharded(grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    local = _local(grads)
    squares = torch.stack([n.float() for n in torch._foreach_norm(local)]).square().sum()
    dist.all_reduce(squares, group=grads[0].device_mesh.get_group())
    total = squares.sqrt()
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for idx in _by_device_and_dtype(local):
        torch._foreach_mul_([local[i] for i in idx], scale.to(local[idx[0]].dtype))
    return total
