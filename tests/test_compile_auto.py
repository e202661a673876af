"""--compile auto (the default): it compiles only where the gain measured for the model and CPU kind, over the
steps left after two timed eager steps, outlasts the compile's cost (a warm cache's, once recorded; a cold one
in a child process beside the eager steps); otherwise it stays eager, and says which in one line."""

import json
import time

import pytest
import torch

from genperf import autocompile, compiled, config, perf, train, trainer

TINY_FLOW = ["realnvp", "--data", "digits", "--image-size", "16", "--batch-size", "16", "--mid-channels", "8"]
TINY_FLOW += ["--num-blocks", "1"]


def test_the_flag_parses_to_on_off_or_auto_and_round_trips_to_workers():
    assert config.parse_args(["vae"]).compile == "auto"
    assert config.parse_args(["vae", "--compile"]).compile == "on"
    assert config.parse_args(["vae", "--no-compile"]).compile == "off"
    assert config.parse_args(["vae", "--compile", "off"]).compile == "off"
    for value in ("on", "off"):
        assert config.parse_args(config.to_argv(config.parse_args(["vae", "--compile", value]))).compile == value
    assert config.make("vae", compile=True).compile == "on"  # genperf.fit(compile=True)
    # runs stored before auto held True or False
    assert config.stored({"model": "vae", "compile": True}).compile == "on"
    assert config.stored({"model": "vae", "compile": False}).compile == "off"
    assert config.stored({"model": "vae"}).compile == "off"


def test_compiling_pays_when_the_steps_left_save_more_than_the_compile_costs():
    how, words = compiled.decide(1.5, 60.0, None, 0.5, 200.0, False)  # saves 200 s / 3 = 67 s > 60 s cold
    assert how == "here" and "about 60 s (cold cache)" in words and "save 67 s of the 200 s of eager" in words
    assert compiled.decide(1.5, 60.0, None, 0.5, 150.0, False)[0] is None  # 50 s saved
    assert compiled.decide(1.5, 60.0, 4.0, 0.5, 15.0, True)[0] == "here"  # a warm cache: 4 s, 5 s saved
    assert compiled.decide(1.06, 97.0, None, 0.5, 1500.0, False)[0] is None  # Zen 4's 6%: 85 s saved in 25 min


def test_a_cold_compile_beside_eager_steps_costs_only_the_speed_they_lose():
    kept, filled = compiled.KEPT_BESIDE_CHILD, compiled.FROM_FILLED_CACHE_S
    cost = 60.0 * (1 - kept / 1.5) + filled  # 49 s with the Xeon's measurements
    assert 0 < kept < 1 and cost < 60.0
    saved_s = lambda left_s: left_s * (1 - 1 / 1.5)  # noqa: E731
    how, words = compiled.decide(1.5, 60.0, None, 0.5, 3 * (cost + 1), True)
    assert how == "in a child" and f"about {cost:.0f} s (cold cache, in a child process" in words
    assert saved_s(3 * (cost + 1)) > cost
    assert compiled.decide(1.5, 60.0, None, 0.5, 3 * (cost - 1), True)[0] is None


@pytest.mark.parametrize(
    "parallel, invertible, device, why",
    [
        ("fsdp", False, "cpu", "its gain under --fsdp is not measured"),
        (None, True, "cpu", "--compile does not combine with --invertible"),
        (None, False, "cuda", "its gain for realnvp on cuda in bf16 is not measured"),
    ],
)
def test_auto_does_not_judge_what_was_not_measured(parallel, invertible, device, why):
    assert compiled.measured_gain("realnvp", device, "bf16", parallel, invertible) == (None, None, why)


def test_every_measured_cpu_kind_has_a_gain_and_a_cost():
    for (_model, kind, precision), (gain, cold_s) in compiled.MEASURED.items():
        assert gain > 1 and cold_s > 0 and kind in ("AMX", "AVX-512 BF16", "AVX2") and precision in ("bf16", "fp32")
    assert compiled.cpu_kind() in ("AMX", "AVX-512 BF16", "AVX2")


def test_a_cpu_without_bf16_kernels_is_judged_as_avx2_whatever_its_flags(monkeypatch):
    monkeypatch.setattr(compiled, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert compiled.cpu_kind() == "AVX2"


def test_the_cache_remembers_the_fewest_seconds_a_configuration_compiled_in(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert compiled.recorded_seconds("k") is None
    compiled.record_seconds("k", 52.0)  # cold
    compiled.record_seconds("k", 4.0)  # warm
    compiled.record_seconds("k", 6.0)
    assert compiled.recorded_seconds("k") == 4.0
    assert json.load(open(tmp_path / compiled.RECORD)) == {"k": 4.0}


def _run_auto(tmp_path, monkeypatch, capsys, gain, cold_s, steps, child=None):
    """A tiny RealNVP run under --compile auto, with `gain` as the measurement of this machine's kind and `child`
    in place of the child process; returns (its stdout lines of genperf, the steps at which it compiled).
    Compiling itself is left out: only the decisions count."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    precision = "fp32"
    monkeypatch.setattr(compiled, "MEASURED", {("realnvp", compiled.cpu_kind(), precision): (gain, cold_s)})
    if child:
        monkeypatch.setattr(autocompile, "CompileInChild", child)
    calls = []
    monkeypatch.setattr(trainer.Trainer, "compile_now", lambda self: calls.append(self.step))
    assert train.main([*TINY_FLOW, "--steps", str(steps), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    return [line for line in out.splitlines() if line.startswith("genperf: --compile auto")], calls


def test_a_short_run_stays_eager_and_says_why(tmp_path, monkeypatch, capsys):
    lines, calls = _run_auto(tmp_path, monkeypatch, capsys, 1.5, 30.0, 8)
    assert calls == [] and len(lines) == 1
    assert lines[0].startswith("genperf: --compile auto (1.50x for realnvp on ")
    assert "s (cold cache" in lines[0] and lines[0].endswith("staying eager (--compile compiles anyway)")


def _one_thread_run(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no thread to spare: a cold compile runs in the run
    monkeypatch.setattr(autocompile, "CompileInChild", None)  # never started
    return threads


def test_a_long_run_compiles_after_two_timed_eager_steps(tmp_path, monkeypatch, capsys):
    threads = _one_thread_run(monkeypatch)
    try:
        lines, calls = _run_auto(tmp_path, monkeypatch, capsys, 2.0, 1e-6, 8)  # a compile that costs nothing pays
    finally:
        torch.set_num_threads(threads)
    assert calls == [2] and len(lines) == 1 and lines[0].endswith("compiling now (--no-compile stays eager)")


AUTO = "genperf: --compile auto:"


class FakeChild:
    """In place of CompileInChild: done after `polls` polls, with `outcome`."""

    polls, outcome, started = 2, (True, 12.0, ""), []

    def __init__(self, options, batch):
        self.started.append((options["model"], tuple(batch.shape)))
        self.left = self.polls

    def poll(self):
        self.left -= 1
        return self.outcome if self.left < 0 else None

    def close(self):
        pass


@pytest.mark.parametrize("filled", [True, False])
def test_a_cold_compile_runs_in_a_child_and_the_run_compiles_once_it_is_done(tmp_path, monkeypatch, capsys, filled):
    monkeypatch.setattr(compiled, "FROM_FILLED_CACHE_S", 0.0)
    monkeypatch.setattr(FakeChild, "started", [])
    monkeypatch.setattr(FakeChild, "outcome", (True, 12.0, "") if filled else (False, 3.0, "RuntimeError: boom"))
    lines, calls = _run_auto(tmp_path, monkeypatch, capsys, 2.0, 1e-6, 8, FakeChild)
    assert FakeChild.started == [("realnvp", (16, 1, 16, 16))]  # the run's model and batch
    assert lines[0].endswith("compiling in a child process while eager steps go on (--no-compile stays eager)")
    if filled:  # decided after step 2, polled after steps 3, 4 and 5
        assert calls == [5] and lines[1] == f"{AUTO} the child process compiled in 12 s; compiling from its cache"
    else:
        assert calls == [] and lines[1] == f"{AUTO} the child process failed (RuntimeError: boom); staying eager"


def test_a_child_that_fails_says_why_and_gives_the_threads_back():
    threads = torch.get_num_threads()
    child = autocompile.CompileInChild({"model": "no-such-model"}, torch.zeros(2, 1, 8, 8))
    assert torch.get_num_threads() == max(1, threads - 1)
    deadline = time.monotonic() + 60
    while (done := child.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert done is not None and done[0] is False and "no-such-model" in done[2]
    assert torch.get_num_threads() == threads


def test_an_unmeasured_configuration_stays_eager_in_one_line(tmp_path, capsys):
    argv = ["dcgan", "--data", "digits", "--image-size", "16", "--latent-dim", "8", "--steps", "3"]
    assert train.main([*argv, "--out", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "--compile auto" in line]
    assert lines == [
        f"genperf: --compile auto: staying eager: its gain for dcgan on {compiled.cpu_kind()} in fp32 is not "
        "measured (--compile compiles anyway)"
    ]


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_the_child_fills_the_cache_the_run_then_compiles_from(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    from genperf.data import load_dataset, make_batches
    from genperf.families import build_objective
    from genperf.precision import Precision

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    c = config.parse_args([*TINY_FLOW, "--steps", "3"])
    data = load_dataset(c.data, c.data_root, c.image_size, c.channels, c.download, c.seed)
    objective = build_objective(c, data, Precision("cpu", c.amp), torch.device("cpu"))
    x = next(iter(make_batches(data.train, c.batch_size, c.seed, device=torch.device("cpu")).epoch(0)))
    objective.train_step(x, 0)  # eager, as the run's first steps
    perf.measure_peak_flops("cpu", torch.float32, size=64, seconds=0.01)  # as a run does: it must leave torch as it was
    auto = autocompile.AutoCompile((2.0, 1.0, "test"), "key", vars(c), lambda s: 0.0, print)
    auto.child = autocompile.CompileInChild(vars(c), x)
    with auto.paused():  # the child and its compile workers stop while the caller works off the clock
        time.sleep(0.5)
        assert _state(auto.child.proc.pid) == "T"
    deadline = time.monotonic() + 600
    while not auto.after_step(0.0, x):
        assert auto.child and time.monotonic() < deadline, "the child failed or took too long"
        time.sleep(0.5)
    counters.clear()
    objective.compile(**compiled.compile_options(c))
    objective.train_step(x, 1)
    assert counters["inductor"]["fxgraph_cache_hit"] > 0 and counters["inductor"]["fxgraph_cache_miss"] == 0
