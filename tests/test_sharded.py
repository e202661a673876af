"""genperf.sharded: Adam and gradient clipping on FSDP2's local shards against torch's own over the DTensors, and
both against plain Adam on whole tensors in one process (two gloo ranks, torch.multiprocessing)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genperf.precision import make_adam
from genperf.sharded import ShardedAdam, clip_grad_norm_

STEPS = 4
MAX_NORM = 0.2  # below the gradients' norm, so that clipping scales them


def _model():
    torch.manual_seed(0)
    # odd sizes: the two ranks' shards are uneven (FSDP2 shards dim 0: 5 rows as 3 and 2)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _groups(model, amsgrad):
    decayed = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return [dict(params=decayed, weight_decay=1e-2, amsgrad=amsgrad), dict(params=rest, weight_decay=0.0)]


def _train(model, optimizer, clip, inputs):
    norms = []
    for x in inputs:
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        norms.append(clip(list(model.parameters()), MAX_NORM))
        optimizer.step()
    return norms


def _on_rank(rank, world_size, store_path, inputs, out):
    """Each rank trains an FSDP2 copy with torch's Adam and clipping over DTensors, and one with genperf's; saves
    both copies' whole parameters, their local Adam moments and the norms."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
    try:
        from torch.distributed.fsdp import fully_shard

        results = {}
        half = [x.tensor_split(world_size)[rank] for x in inputs]
        for name in ("torch", "genperf"):
            model = fully_shard(_model())
            if name == "torch":
                optimizer = torch.optim.Adam(_groups(model, True), lr=1e-2, betas=(0.9, 0.99), fused=True)
                clip = torch.nn.utils.clip_grad_norm_
            else:
                optimizer, clip = make_adam(_groups(model, True), 1e-2, (0.9, 0.99), "cpu"), clip_grad_norm_
                assert type(optimizer) is ShardedAdam
            norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in _train(model, optimizer, clip, half)]
            results[name] = dict(
                params=[p.full_tensor() for p in model.parameters()],
                moments=[
                    v.to_local() for p in model.parameters() for k, v in optimizer.state[p].items() if k != "step"
                ],
                norms=torch.stack(norms),
            )
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_adam_and_clipping_on_local_shards_match_torch_on_dtensors_and_on_one_process(tmp_path):
    inputs = [torch.randn(8, 7) for _ in range(STEPS)]
    out = str(tmp_path / "result")
    mp.start_processes(_on_rank, args=(2, str(tmp_path / "store"), inputs, out), nprocs=2, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]

    model = _model()  # one process, whole tensors: the reference both must follow
    optimizer = torch.optim.Adam(_groups(model, True), lr=1e-2, betas=(0.9, 0.99))
    norms = torch.stack(_train(model, optimizer, torch.nn.utils.clip_grad_norm_, inputs))
    assert (norms > MAX_NORM).all()  # every step clipped
    for rank in ranks:
        torch_, genperf = rank["torch"], rank["genperf"]
        for a, b in zip(genperf["moments"], torch_["moments"]):
            assert torch.equal(a, b)  # the same kernel on the same shards
        for a, b in zip(genperf["params"], torch_["params"]):
            assert torch.equal(a, b)
        torch.testing.assert_close(genperf["norms"], torch_["norms"], rtol=1e-6, atol=0)
        torch.testing.assert_close(genperf["norms"], norms, rtol=1e-5, atol=0)
        for a, b in zip(genperf["params"], model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_plain_parameters_get_torch_adam():
    model = _model()
    assert type(make_adam(model.parameters(), 1e-3, (0.9, 0.999), "cpu")) is torch.optim.Adam
