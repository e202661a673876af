"""--compile: compiled steps against eager ones for every model, no recompiles after warm-up, and
runs that switch --compile on or off across a resume."""

import copy
import json
import re

import pytest
import torch
from torch._dynamo.utils import counters

from genperf import config, train
from genperf.data import load_dataset, make_batches
from genperf.dtypes import cpu_has_bf16
from genperf.families import build_objective
from genperf.precision import Precision

SMALL = {  # tiny versions of every model family (vae and beta-vae share the model and step)
    "realnvp": ["--mid-channels", "8", "--num-blocks", "1"],
    "vae": [],
    "dcgan": ["--latent-dim", "10", "--label-smoothing"],
    "wgan-gp": ["--latent-dim", "10", "--critic-iters", "2"],
    "wgan": ["--latent-dim", "10", "--critic-iters", "2"],
}


# Cold inductor codegen takes 5-40 s a graph on a 2-core Xeon (1-5 s from a warm cache): the fast tier compiles
# RealNVP (the flagship, whose step the fast tier's audit also compiles under --amp) and WGAN-GP (the penalty's
# double backward) in fp32; every other model, and every bf16 step, is the slow tier's.
FAST = ("realnvp", "wgan-gp")


def _tiered(models, fast=FAST):
    return [m if m in fast else pytest.param(m, marks=pytest.mark.slow) for m in models]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles its own graphs (a new model class layout or dtype would otherwise count
    against dynamo's per-function recompile limit across tests)."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _objective(model, amp, compiled, extra=()):
    args = config.parse_args(
        [model, "--data", "digits", "--image-size", "16", "--batch-size", "16", *SMALL[model], *extra]
    )
    data = load_dataset("digits", image_size=16, download=False)
    torch.manual_seed(0)
    objective = build_objective(args, data, Precision("cpu", amp), torch.device("cpu"))
    if compiled:
        objective.compile(fullgraph=True)
    return objective, data


def _train(model, amp, compiled, steps):
    """Metrics of every step and, after the last, every parameter's gradient (of its last backward)."""
    objective, data = _objective(model, amp, compiled)
    torch.manual_seed(1)
    batches = make_batches(data.train, 16, seed=0).epoch(0)
    metrics = [{k: v.item() for k, v in objective.train_step(next(batches), step).items()} for step in range(steps)]
    if compiled:
        assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    grads = {f"{name}.{p}": q.grad.clone() for name, m in objective.modules.items() for p, q in m.named_parameters()}
    return metrics, grads


# Two steps: for the WGANs (--critic-iters 2) a critic-only step and a critic + generator step.
STEPS = 2


def _grads(objective):
    return {f"{name}.{p}": q.grad for name, m in objective.modules.items() for p, q in m.named_parameters()}


def _start_from(objective, source):
    """`objective` takes `source`'s parameters, buffers and Adam moments (copied, not shared), and both forget
    their gradients, so that their next steps start from one state."""
    for name, module in source.modules.items():
        objective.modules[name].load_state_dict(module.state_dict())
    for name, optimizer in source.optimizers.items():
        objective.optimizers[name].load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for o in (objective, source):
        for m in o.modules.values():
            m.zero_grad(set_to_none=True)


# The biases inside RealNVP's batch-normed s/t networks (all but the output conv's) reach the loss only through batch
# norms, which remove a constant shift: their exact gradient is zero, and what either run computes is rounding noise.
ZERO_GRADIENT = re.compile(r"\.st_net\.(in_conv|in_skip|skips\.\d+|blocks\.\d+\.conv2)\.bias$")


@pytest.mark.parametrize("model", _tiered(SMALL))
def test_compiled_steps_match_eager_steps(model):
    """fp32: each compiled step from the eager step's starting state equals the eager step to float rounding,
    for every metric and gradient. (Two runs left to drift apart would not: Adam's first updates, about
    lr * sign(g), turn a rounding difference in a near-zero gradient into a 2 * lr parameter difference.)"""
    eager, data = _objective(model, False, False)
    compiled, _ = _objective(model, False, True)
    batches = make_batches(data.train, 16, seed=0).epoch(0)
    for step in range(STEPS):
        x = next(batches)
        _start_from(compiled, eager)
        e, c = eager.train_step(x, step), compiled.train_step(x, step)
        for k in e:
            assert c[k].item() == pytest.approx(e[k].item(), rel=1e-4, abs=1e-5), (step, k)
        compiled_grads = _grads(compiled)
        for name, g in _grads(eager).items():
            assert (g is None) == (compiled_grads[name] is None), (step, name)
            if g is not None and not ZERO_GRADIENT.search(name):
                torch.testing.assert_close(
                    compiled_grads[name], g, rtol=1e-3, atol=1e-5, msg=lambda m: f"step {step}: {name}: {m}"
                )
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"


@pytest.mark.skipif(not cpu_has_bf16(), reason="--amp trains in fp32 on a CPU without bf16 kernels (no AVX-512)")
@pytest.mark.parametrize("model", _tiered(SMALL, fast=()))
def test_compiled_bf16_steps_stay_within_twice_eager_bf16_error(model):
    """bf16: compiled and eager round at different places (inductor keeps fused intermediates in fp32), so
    both are held against the fp32 eager run: the compiled error may be at most twice eager bf16's own
    error plus 1% of the value (the GUIDE's rule for low-precision kernels), for each metric and for each
    module's whole gradient. (Per tensor the rule is noise for one-element biases, whose gradient is a sum
    with heavy cancellation: eager bf16 may land within 0.3% of fp32 by luck where compiled is 2% off,
    while both are 6-20% off on the other tensors after two bf16 steps.)"""
    exact_metrics, exact_grads = _train(model, False, False, STEPS)
    bf16_metrics, bf16_grads = _train(model, True, False, STEPS)
    bf16c_metrics, bf16c_grads = _train(model, True, True, STEPS)
    for e, lo, c in zip(exact_metrics, bf16_metrics, bf16c_metrics):
        for k in e:
            assert abs(c[k] - e[k]) <= 2 * abs(lo[k] - e[k]) + 0.01 * abs(e[k]) + 1e-3, (k, e[k], lo[k], c[k])
    for module in {name.split(".")[0] for name in exact_grads}:
        names = [name for name in exact_grads if name.startswith(module + ".")]
        exact, eager, compiled = (
            torch.cat([grads[n].flatten() for n in names]) for grads in (exact_grads, bf16_grads, bf16c_grads)
        )
        err_eager, err_compiled = (eager - exact).norm(), (compiled - exact).norm()
        assert err_compiled <= 2 * err_eager + 0.01 * exact.norm() + 1e-6, (
            module,
            err_eager.item(),
            err_compiled.item(),
        )


@pytest.mark.parametrize("model", ["realnvp", "wgan-gp"])
def test_no_recompiles_after_warm_up(model):
    # fp32, the graphs test_compiled_steps_match_eager_steps compiled, which inductor's cache then holds (in bf16 these
    # took 45 s of cold codegen on a 2-core Xeon, 2 s now); bf16's recompiles are the compiled flow step's audit's
    # (tests/test_audit.py) and the slow tier's
    objective, data = _objective(model, False, True)
    batches = make_batches(data.train, 16, seed=0)
    cycle = getattr(objective, "critic_iters", 1)
    for step, x in zip(range(4 * cycle), batches.epoch(0)):
        objective.train_step(x, step)
        if step + 1 == cycle:  # a whole generator cycle: every graph of the step exists now
            warm = counters["stats"]["unique_graphs"]
            assert warm >= 1
    assert step + 1 == 4 * cycle
    assert counters["stats"]["unique_graphs"] == warm, "recompiled after warm-up"
    assert not counters["graph_break"]


def _run(out, *extra):
    # batch 16 as in _objective: these runs compile the graphs test_compiled_steps_match_eager_steps compiled, which
    # inductor's cache then holds (its C++ kernels took 1-2 minutes to build on a cold cache here)
    argv = [
        "realnvp",
        "--data",
        "digits",
        "--image-size",
        "16",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--log-every",
        "5",
        *SMALL["realnvp"],
        *extra,
    ]
    return train.main(argv)


def _params(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["models"]["realnvp"]


@pytest.mark.slow  # three runs, two compiled
def test_a_compiled_run_resumes_with_and_without_compile(tmp_path, capsys):
    """The normalisation-free s/t networks: there compiled and eager steps agree to rounding over 20 steps, so the
    resumed runs must equal the whole one. (With batch norm, Adam turns the two modes' rounding differences in the
    first steps' near-zero gradients into lr-sized steps: 5e-3 apart after 20 steps; test_compiled_steps_match_
    eager_steps holds the batch-normed network to rounding over its first steps.)"""
    whole, off, on = tmp_path / "whole", tmp_path / "off", tmp_path / "on"
    # a constant rate: a cosine schedule (realnvp's default) follows --steps, which the resumed runs change
    free = ("--st-norm", "none", "--lr-schedule", "constant")
    assert _run(whole, *free, "--steps", "20") == 0
    assert _run(off, *free, "--steps", "10", "--compile") == 0
    assert "genperf: torch.compile compiled" in capsys.readouterr().out  # reported once, with its time
    assert _run(off, "--steps", "20", "--resume") == 0  # compiled run continued eagerly
    assert _run(on, *free, "--steps", "10") == 0
    torch._dynamo.reset()  # as in a new process: the first run's graphs are gone
    assert _run(on, "--steps", "20", "--resume", "--compile") == 0  # eager run continued compiled
    summary = json.loads((on / "summary.json").read_text())
    assert summary["compile_s"] > 0 and summary["steps"] == 20
    expected = _params(whole)
    for out in (off, on):
        got = _params(out)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-5, msg=key)


def test_compile_refuses_invertible(tmp_path, capsys):
    assert _run(tmp_path, "--steps", "2", "--compile", "--invertible") == 2
    assert "--compile does not combine with --invertible" in capsys.readouterr().err


@pytest.mark.slow  # 32 s of cold codegen for graphs of their own; eager checkpointing is in the fast tier
@pytest.mark.parametrize("checkpointing", ["coupling", "block"])
def test_compiled_checkpointing_updates_the_running_statistics_once(checkpointing):
    """Compiled with activation checkpointing (the coupling or the s/t networks' blocks compiled with what they
    recompute), one step leaves the batch norms' running statistics where an eager step without checkpointing
    does, and trains without recompiling after its first step."""
    eager, _ = _objective("realnvp", False, False)
    compiled, data = _objective("realnvp", False, True, extra=("--checkpointing", checkpointing))
    x = next(make_batches(data.train, 16, seed=0).epoch(0))
    for objective in (eager, compiled):
        torch.manual_seed(1)
        objective.train_step(x, 0)
    for (name, want), got in zip(eager.model.named_buffers(), compiled.model.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)
    warm = counters["stats"]["unique_graphs"]
    compiled.train_step(x, 1)
    assert counters["stats"]["unique_graphs"] == warm, "recompiled after the first step"
