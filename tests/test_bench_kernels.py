"""benchmarks/bench_kernels.py: prints unless asked to write a CSV, marks noisy timings, and never times
eager code under the torch.compile label."""

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDED = os.path.join(ROOT, "benchmarks", "results", "kernels.csv")


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kernels", os.path.join(ROOT, "benchmarks", "bench_kernels.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real_compile = torch.compile  # dynamo's guards and recompile limit as ever, without the C++ compiler's minutes
    monkeypatch.setattr(torch, "compile", lambda fn, **options: real_compile(fn, backend="eager"))
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield module
    torch._dynamo.reset()


def test_prints_only_unless_given_a_csv(bench, tmp_path, capsys):
    recorded = open(RECORDED, "rb").read()
    assert bench.main(["--only", "penalty", "--batches", "2", "--reps", "3"]) == 0
    assert open(RECORDED, "rb").read() == recorded  # was: rows appended to the tracked file
    assert "appended" not in capsys.readouterr().out
    assert bench.main(["--only", "penalty", "--batches", "2", "--reps", "3", "--csv", str(tmp_path / "k.csv")]) == 0
    assert len((tmp_path / "k.csv").read_text().splitlines()) == 1 + 2 * len(bench.providers(torch.device("cpu")))


def test_noisy_timings_are_marked(bench, capsys):
    rows = []
    bench.report(
        rows,
        "op",
        "x",
        "fwd",
        {"eager": (1.0, 5.0, 10.0), "cpu": (0.0100, 0.0101, 0.0102)},
        0,
        torch.device("cpu"),
        torch.float32,
        {},
    )
    lines = capsys.readouterr().out.splitlines()
    assert all(line.endswith("NOISY (eager)") for line in lines)  # the cpu ratio rests on a noisy baseline
    assert [r["noisy"] for r in rows] == [True, False]


def test_compile_column_never_hits_the_recompile_limit(bench):
    """Every coupling shape of both presets, forward and backward: more graphs than dynamo's limit of 8 for
    one function, which made the old shared torch.compile fall back to eager part way through."""
    shapes = bench.coupling_shapes("mnist", 2) + bench.coupling_shapes("celeba64", 2)
    assert 2 * len(shapes) > torch._dynamo.config.recompile_limit
    bench.bench_coupling(torch.device("cpu"), [2, 4], 2, torch.float32, rows := [], {})
    assert {r["provider"] for r in rows} >= {"eager", "compile"}


def test_markdown_appends_one_table_under_the_machine(bench, tmp_path, monkeypatch):
    from genperf.perf import machine

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))  # bench_quality (commit), as when run as a script
    page = tmp_path / "kernels.md"
    page.write_text("# Kernels\n\n")
    assert bench.main(["--only", "penalty", "--batches", "2", "--reps", "3", "--markdown", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Kernels\n\n") and machine("cpu") in text
    assert "| op | input | mode | eager | compile | cpu |" in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| gradient_penalty |")]
    assert len(rows) == 2 and all("(1.00x)" in row[4] for row in rows)  # MNIST and CelebA sizes; eager is 1x


def test_each_provider_is_printed_with_the_host_cost_of_a_call(bench, capsys):
    assert bench.main(["--only", "penalty", "--batches", "2", "--reps", "3", "--dtypes", "float32", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert out.count("host cost of one call") == 2  # one line per dtype
    timed = [line for line in out.splitlines() if line.startswith("gradient_penalty")]
    assert len(timed) == 2 * 2 * len(bench.providers(torch.device("cpu")))  # 2 sizes x 2 dtypes
    assert all("(host " in line for line in timed)


def test_rank_writes_this_devices_ranking_and_keeps_the_others(bench, tmp_path, monkeypatch):
    import shutil
    import subprocess

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    table = tmp_path / "measured.py"
    shutil.copy(os.path.join(ROOT, "genperf", "ops", "measured.py"), table)
    before = _load(table)
    assert bench.main(["--only", "penalty", "--batches", "2", "--reps", "3", "--rank", str(table)]) == 0
    after = _load(table)
    assert after.RANKING["cuda"] == before.RANKING["cuda"] and after.SOURCE["cuda"] == before.SOURCE["cuda"]
    ranked = after.RANKING["cpu"]["gradient_penalty"]
    assert {name for name, _ in ranked} == {"reference", "cpu"} and dict(ranked)["reference"] == 1.0
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert "2 threads" not in after.SOURCE["cpu"] and "batches 2, float32" in after.SOURCE["cpu"]
    check = subprocess.run(["ruff", "format", "--check", str(table)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # the generated file is as the repository's code


def _load(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("measured_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
