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
        timeout=600,
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
    for name in ("train", "fsdp", "resume", "dali", "throughput", "kernels", "memory"):
        monkeypatch.setattr(selftest, f"stage_{name}", lambda suite: ("skip", "not in this test", {}))
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
