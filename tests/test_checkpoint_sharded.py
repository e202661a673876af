"""genperf.checkpoint: sharded checkpoints of FSDP2 modules, in a one-rank process group of its own process."""

import pathlib
import subprocess
import sys

import torch
import torch.distributed as dist

from genperf.checkpoint import _rename_params, _renamer, load_sharded, save_sharded, sharded_states
from genperf.distributed import apply_fsdp
from genperf.models import RealNVP, WeightNormConv2d
from genperf.precision import make_adam


def _trained_flow(seed):
    torch.manual_seed(seed)
    model = RealNVP(1, 4, 1, 4, 1)
    apply_fsdp(model, model.couplings())
    optimizer = make_adam(model.parameters(), 1e-2, (0.9, 0.999), "cpu")
    model.bits_per_dim(torch.rand(2, 1, 4, 4)).mean().backward()
    optimizer.step()
    return model, optimizer


def _local(states):
    return {k: v.to_local().clone() if hasattr(v, "to_local") else v for k, v in states.items()}


def test_sharded_checkpoints_with_torchs_weight_norm_names_load(tmp_path):
    """Sharded checkpoints written before WeightNormConv2d name its parameters as torch's weight_norm
    parametrization did; they resume into today's model, Adam state included. Runs in a fresh interpreter: after
    this process group's checkpoint save, CPU ops in the same process ran up to 3x slower for the rest of the test
    session (a bf16 conv 0.8 -> 2.6 ms, as slow as with OMP_WAIT_POLICY=passive)."""
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("loaded")


def check_old_names_load(tmp_path):
    model, optimizer = _trained_flow(0)
    states = sharded_states({"realnvp": model}, {"realnvp": optimizer})
    to_old = _renamer({new: old for old, new in WeightNormConv2d.OLD_KEYS.items()})
    old = _rename_params(states, to_old)
    assert any(k.endswith("parametrizations.weight.original1") for k in old["models"]["realnvp"])
    save_sharded(old, str(tmp_path / "ckpt"))  # what the earlier code wrote

    fresh, fresh_optimizer = _trained_flow(1)
    assert not torch.equal(
        _local(fresh.state_dict())["scales.0.in_couplings.0.st_net.in_conv.weight_v"],
        _local(model.state_dict())["scales.0.in_couplings.0.st_net.in_conv.weight_v"],
    )
    load_sharded(
        {"realnvp": fresh}, {"realnvp": fresh_optimizer}, str(tmp_path / "ckpt"), old_names=WeightNormConv2d.OLD_KEYS
    )
    want, got = _local(model.state_dict()), _local(fresh.state_dict())
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    for p_want, p_got in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(
            fresh_optimizer.state[p_got]["exp_avg"].to_local(), optimizer.state[p_want]["exp_avg"].to_local()
        )


if __name__ == "__main__":
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        check_old_names_load(pathlib.Path(sys.argv[1]))
    finally:
        dist.destroy_process_group()
    print("loaded")
