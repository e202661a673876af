"""--compile auto (the default): it compiles only where the gain measured for the model and CPU kind, over the
steps left after two timed eager steps, outlasts the compile's cost (a warm cache's, once recorded); otherwise it
stays eager, and says which in one line."""

import json

import pytest

from genperf import compiled, config, train, trainer

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
    go, words = compiled.decide(1.5, 60.0, None, 0.5, 400)  # saves 400 * 0.5 / 3 = 67 s > 60 s cold
    assert go and "about 60 s (cold cache)" in words and "save 67 s over the 400 steps left" in words
    assert not compiled.decide(1.5, 60.0, None, 0.5, 300)[0]  # 50 s saved
    assert compiled.decide(1.5, 60.0, 4.0, 0.5, 30)[0]  # a warm cache: 4 s, 5 s saved
    assert not compiled.decide(1.06, 97.0, None, 0.5, 3000)[0]  # Zen 4's 6%: 85 s saved in 25 minutes


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


def test_the_cache_remembers_the_fewest_seconds_a_configuration_compiled_in(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert compiled.recorded_seconds("k") is None
    compiled.record_seconds("k", 52.0)  # cold
    compiled.record_seconds("k", 4.0)  # warm
    compiled.record_seconds("k", 6.0)
    assert compiled.recorded_seconds("k") == 4.0
    assert json.load(open(tmp_path / compiled.RECORD)) == {"k": 4.0}


def _run_auto(tmp_path, monkeypatch, capsys, gain, cold_s, steps):
    """A tiny RealNVP run under --compile auto, with `gain` as the measurement of this machine's kind; returns
    (its stdout lines of genperf, whether it compiled). Compiling itself is left out: only the decision counts."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    precision = "fp32"
    monkeypatch.setattr(compiled, "MEASURED", {("realnvp", compiled.cpu_kind(), precision): (gain, cold_s)})
    calls = []
    monkeypatch.setattr(trainer.Trainer, "compile_now", lambda self: calls.append(self.step))
    assert train.main([*TINY_FLOW, "--steps", str(steps), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    return [line for line in out.splitlines() if line.startswith("genperf: --compile auto")], calls


def test_a_short_run_stays_eager_and_says_why(tmp_path, monkeypatch, capsys):
    lines, calls = _run_auto(tmp_path, monkeypatch, capsys, 1.5, 30.0, 8)
    assert calls == [] and len(lines) == 1
    assert lines[0].startswith("genperf: --compile auto (1.50x for realnvp on ")
    assert "compiling costs about 30 s (cold cache)" in lines[0] and lines[0].endswith(
        "staying eager (--compile compiles anyway)"
    )


def test_a_long_run_compiles_after_two_timed_eager_steps(tmp_path, monkeypatch, capsys):
    lines, calls = _run_auto(tmp_path, monkeypatch, capsys, 2.0, 1e-6, 8)  # a compile that costs nothing pays
    assert calls == [2] and len(lines) == 1 and lines[0].endswith("compiling now (--no-compile stays eager)")


def test_an_unmeasured_configuration_stays_eager_in_one_line(tmp_path, capsys):
    argv = ["dcgan", "--data", "digits", "--image-size", "16", "--latent-dim", "8", "--steps", "3"]
    assert train.main([*argv, "--out", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "--compile auto" in line]
    assert lines == [
        f"genperf: --compile auto: staying eager: its gain for dcgan on {compiled.cpu_kind()} in fp32 is not "
        "measured (--compile compiles anyway)"
    ]
