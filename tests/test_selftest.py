"""benchmarks/selftest.py: its quick mode end to end on this machine, and its verdict."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "selftest.py")
_spec = importlib.util.spec_from_file_location("selftest", SCRIPT)
selftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(selftest)


@pytest.mark.slow
def test_quick_selftest_runs_every_stage_and_reports(tmp_path):
    # As a user starts it: without the Triton interpreter that this suite's conftest switches on (under it the
    # kernels stage also times the interpreted Triton kernels)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "selftest.json").read_text())
    stages = {s["name"]: s for s in result["stages"]}
    assert list(stages) == ["build", *(name for name, _ in selftest.STAGES)]
    assert result["ok"] and result["device"] == "cpu"
    for name in ("build", "op-tests", "train", "fsdp", "resume", "kernels", "throughput"):
        assert stages[name]["status"] == "pass", stages[name]
    assert stages["op-tests"]["counts"]["tests"] > 50 and stages["op-tests"]["counts"]["failures"] == 0
    assert set(stages["train"]["models"]) == set(selftest.MODELS)
    assert stages["resume"]["max_relative_difference"] == 0  # bit for bit on CPU
    assert stages["memory"]["status"] == "skip" and stages["memory"]["summary"]  # skipped, with its reason
    assert stages["dali"]["status"] in ("pass", "skip") and stages["dali"]["summary"]
    assert any("% of the copy" in line for line in stages["kernels"]["lines"])
    assert "passed" in (tmp_path / "op-tests.log").read_text()  # each stage's commands, whole
    table = (tmp_path / "selftest.md").read_text()
    assert table.startswith("# genperf selftest: ") and "| throughput | pass |" in table


def test_a_failed_correctness_stage_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(selftest, "stage_op_tests", lambda suite: ("fail", "1 passed, 1 failed, 0 skipped", {}))
    for name, _ in selftest.STAGES[1:]:
        monkeypatch.setattr(selftest, f"stage_{name.replace('-', '_')}", lambda suite: ("skip", "not in this test", {}))
    assert selftest.main(["--out", str(tmp_path), "--quick"]) == 1
    result = json.loads((tmp_path / "selftest.json").read_text())
    assert not result["ok"] and result["failed"] == ["op-tests"]
    assert result["verdict"].startswith("FAILED: op-tests")


def test_every_command_of_a_stage_is_logged_whole(tmp_path):
    args = selftest.argparse.Namespace(out=str(tmp_path), budget_s=60, built_s=0, device="cpu", quick=True)
    suite = selftest.Suite(args)
    suite.stage_name = "train"
    long_line = "x" * 5000  # longer than the report's tails
    suite.command(
        [sys.executable, "-c", f"import sys; print('first'); print('{long_line}', file=sys.stderr); sys.exit(3)"]
    )
    log = (tmp_path / "train.log").read_text()
    assert log.startswith("$ ") and "first\n" in log and long_line in log and "[exit 3]" in log


def test_only_runs_the_named_stages_after_the_build(tmp_path, monkeypatch):
    ran = []
    for name, _ in selftest.STAGES:
        stage = "stage_" + name.replace("-", "_")
        monkeypatch.setattr(selftest, stage, lambda suite, name=name: ran.append(name) or ("pass", "ran", {}))
    assert selftest.main(["--out", str(tmp_path), "--quick", "--only", "train,kernels"]) == 0
    stages = [s["name"] for s in json.loads((tmp_path / "selftest.json").read_text())["stages"]]
    assert ran == ["train", "kernels"] and stages == ["build", "train", "kernels"]
    with pytest.raises(SystemExit):
        selftest.main(["--out", str(tmp_path), "--only", "trian"])


def test_memory_stage_sets_the_planners_prediction_beside_the_measurement():
    """bench_memory's table lines -> one line per mode with the committed celeba64 prediction and the ratio."""
    with open(selftest.PLANNED) as f:
        planned = {r["mode"]: r["per_sample"] / 2**20 for r in json.load(f)["rows"]}
    lines = [
        "# RealNVP celeba64, cuda (1 GPU), batches 2 and 10; fit for 2 x 11 GiB, 1 GiB reserved per GPU",
        "mode                fixed/rank  per sample  max global batch  s/sample  time vs base",
        "fp32 baseline          1.31 GiB     277 MiB                64     0.010         1.00x",
        "+checkpointing         1.31 GiB      37 MiB               480     0.012         1.20x",
    ]
    out = selftest.predicted_beside_measured(lines)
    assert len(out) == 2 and out[0].startswith("fp32 baseline: measured 277.0 MiB")
    assert f"predicted {planned['fp32']:.1f} ({277 / planned['fp32']:.2f}x)" in out[0]
    assert f"predicted {planned['--checkpointing coupling']:.1f}" in out[1]


@pytest.mark.slow
def test_the_gpu_probe_runs_end_to_end_on_a_cpu(tmp_path):
    """benchmarks/gpu_probe.sh --device cpu: every stage of the probe at tiny sizes, its one-screen summary."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "benchmarks", "gpu_probe.sh"), str(tmp_path), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(env, PYTHON=sys.executable),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = {s["name"]: s for s in json.loads((tmp_path / "selftest.json").read_text())["stages"]}
    assert list(stages) == ["build", "boundary", "throughput", "gan-speed", "audit", "cudagraphs", "kernels"]
    assert all(s["status"] == "pass" for s in stages.values()), stages
    assert {r["batch"] for r in stages["throughput"]["rows"]} == {"8", "16"}
    assert all(a["host_syncs_per_step"] == 0 and a["graph_breaks"] == 0 for a in stages["audit"]["audits"].values())
    summary = (tmp_path / "probe.md").read_text()
    assert summary in proc.stdout and "slower than plain PyTorch fp32" in summary
    profiles = {stage.name: len(list(stage.iterdir())) for stage in (tmp_path / "profiles").iterdir()}
    assert profiles == {"throughput": 3, "gan-speed": 3 * 2, "cudagraphs": 3}  # every variant of every config


def test_the_probe_summary_names_the_target_and_the_slower_flags(tmp_path):
    args = selftest.argparse.Namespace(out=str(tmp_path), budget_s=60, built_s=0, device="cuda", quick=False)
    suite = selftest.Suite(args)

    def row(config, batch, variant, ips, speedup):
        return dict(config=config, batch=str(batch), variant=variant, images_per_s=ips, speedup=speedup, mfu=0.1)

    suite.stages = [
        dict(
            name="throughput",
            rows=[
                row("realnvp-celeba64-b64", 64, "baseline", 200, 1.0),
                row("realnvp-celeba64-b64", 64, "+amp", 180, 0.9),
                row("realnvp-celeba64-b64", 64, "all on", 700, 3.5),
                row("realnvp-celeba64-b64", 256, "all on", 950, 4.1),
            ],
        ),
        dict(
            name="gan-speed", rows=[row("dcgan-64", 64, "baseline", 900, 1.0), row("dcgan-64", 64, "+amp", 1200, 1.33)]
        ),
    ]
    lines = selftest.probe_summary(suite, {"device_name": "one NVIDIA H100"})
    text = "\n".join(lines)
    assert "best 950 images/s at batch 256 (target 900 on one H100/H200: met)" in text
    assert "first batch: realnvp-celeba64-b64 +amp 0.90x" in text
    assert text.count("| throughput |") == 4 and text.count("| gan-speed |") == 2
