"""genperf.audit (benchmarks/audit_step.py): what a steady-state training step launches, syncs, casts and re-lays
out. The steps genperf trains stay free of host syncs and graph breaks, and the audit sees each kind of cost
when one is put into a step."""

import os

import pytest
import torch

from genperf import audit

# One scale: four checkerboard couplings of one shape share one compiled s/t network, so the cold compile of the
# fast tier's only bf16 graph is one graph, not three (18 s less alone on a 2-core Zen 4).
TINY_FLOW = ["realnvp", "--data", "digits", "--mid-channels", "8", "--num-blocks", "1", "--num-scales", "1"]


def _audit(argv, tmp_path, poison=None, **options):
    """The audit of `argv`'s step, with `poison(objective)` patched into the objective's step if given."""
    trainer = audit.build_trainer(argv, str(tmp_path / "run"))
    if poison:
        step = trainer.objective.train_step
        trainer.objective.train_step = lambda x, i: poison(step(x, i))
    return audit.audit_trainer(trainer, **options)


def test_a_compiled_flow_step_has_no_host_sync_graph_break_or_recompile(tmp_path):
    a = _audit([*TINY_FLOW, "--amp", "--compile", "--channels-last"], tmp_path)
    assert a["host_syncs_per_step"] == 0, a["host_reads"] | a["cpp_syncs"]
    assert a["compiled_graphs"] > 0 and a["compiled_region_calls"] > 0
    assert a["graph_breaks"] == 0 and a["recompiles_while_watched"] == 0
    # the s/t networks' input and output convolutions are padded to channel counts that tensor cores take
    assert a["convolutions"] > 0 and a["convs_not_multiple_of_8"] == {}
    assert a["convs_fed_nchw"] == {}  # inside the compiled s/t networks every convolution runs channels_last
    assert "(none of them logs)" in audit.report(a)


@pytest.mark.parametrize("argv", [["dcgan", "--label-smoothing"], ["wgan-gp"]])
def test_gan_steps_have_no_host_sync(tmp_path, argv):
    a = _audit([*argv, "--data", "digits", "--image-size", "16", "--latent-dim", "8"], tmp_path)
    assert a["host_syncs_per_step"] == 0, a["host_reads"] | a["cpp_syncs"]
    if argv[0] == "wgan-gp":  # a whole generator cycle is watched
        assert a["steps_watched"][1] - a["steps_watched"][0] + 1 == 5


def test_logging_reads_the_device_only_on_its_steps(tmp_path):
    a = _audit(["vae", "--data", "digits", "--log-every", "1"], tmp_path)
    assert a["log_steps_watched"] == list(range(a["steps_watched"][0], a["steps_watched"][1] + 1))
    assert a["host_syncs_per_step"] >= 2  # the log line's means and the loss checks, read once per logged step
    assert any("trainer.py" in where for where in a["host_reads"])


def test_the_audit_names_each_cost_put_into_a_step(tmp_path):
    """A host read, a data-dependent op, an extra cast and a layout change, each at a line of this file."""

    def poison(metrics):
        loss = next(iter(metrics.values()))
        float(loss)  # a host read
        torch.nonzero(loss.reshape(1))  # a data-dependent size
        x = torch.ones(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
        x.to(torch.float64).contiguous()  # a cast, and a channels_last tensor made NCHW
        return metrics

    a = _audit(["dcgan", "--data", "digits", "--image-size", "16", "--latent-dim", "8"], tmp_path, poison)
    here = os.path.relpath(__file__, os.getcwd()) if __file__.startswith(os.getcwd()) else __file__
    reads = [w for w in a["host_reads"] if here in w]
    assert len(reads) == 1 and reads[0].startswith("float() at"), a["host_reads"]
    assert any(k.startswith("aten::nonzero in") for k in a["cpp_syncs"]), a["cpp_syncs"]
    assert a["host_syncs_per_step"] == 2
    assert any(here in where for where in a["layout_changes"]), a["layout_changes"]
    assert a["casts"] >= 1


def test_a_graph_break_is_counted_with_its_reason(tmp_path, monkeypatch):
    """Single-process steps compile with fullgraph=True, where a break is an error; under --ddp or --fsdp they do
    not, and the audit counts the breaks."""
    from torch._dynamo.utils import counters

    from genperf.models import gan

    real_forward = gan.DCGANDiscriminator.forward

    def breaking(self, x):
        torch._dynamo.graph_break()
        return real_forward(self, x)

    monkeypatch.setattr(gan.DCGANDiscriminator, "forward", breaking)
    torch._dynamo.reset()
    counters.clear()
    trainer = audit.build_trainer(
        ["dcgan", "--data", "digits", "--image-size", "16", "--latent-dim", "8"], str(tmp_path)
    )
    trainer.objective.compile(fullgraph=False, backend="eager")
    a = audit.audit_trainer(trainer)
    assert a["graph_breaks"] > 0 and any("graph_break" in reason for reason in a["graph_break_reasons"])
    assert a["recompiles_while_watched"] == 0


def test_ddp_without_torchrun_is_refused_in_one_line(capsys):
    assert audit.main(["dcgan", "--data", "digits", "--ddp"]) == 2
    assert capsys.readouterr().err.strip().startswith("audit_step: error: auditing --ddp or --fsdp needs the ranks")
