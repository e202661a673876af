"""python -m genperf.study: every experiment runs with --quick (two seeds where the runs are cheap, one where
they are slow) and writes its report, figures and results; the aggregation over seeds and the verdicts against
hand-computed values."""

import argparse
import json
import math
import re

import pytest

from genperf import study

SEEDS = ["--seeds", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")  # shared: experiments reuse each other's trained models


def _run(name, out, runs, seeds=SEEDS):
    assert study.main([name, "--quick", *seeds, "--out", str(out), "--runs", str(runs)]) == 0
    report = (out / "report.md").read_text()
    figures = re.findall(r"^!\[.*\]\((.+\.png)\)$", report, flags=re.M)
    assert all((out / f).exists() for f in figures), figures  # every figure the report shows exists
    return json.loads((out / "results.json").read_text()), report, figures


def _check_spread(entry, key, seeds=("0", "1")):
    """entry[key] and entry[key_std] are the mean and sample std of the per-seed values (std None for one seed)."""
    values = [v[key] for v in entry["per_seed"].values()]
    assert sorted(entry["per_seed"]) == list(seeds)
    mean = sum(values) / len(values)
    assert entry[key] == pytest.approx(mean)
    if len(values) == 1:
        assert entry[f"{key}_std"] is None
    else:
        assert entry[f"{key}_std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)))


# Two seeds where the report aggregates cheap runs; one where the runs are the slow ones (RealNVP, the sweeps).
ONE_SEED = {"evolution", "interpolation", "latent-sweep", "flow-stability"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["evolution", "interpolation", "latent-sweep", "label-smoothing", "beta-sweep", "flow-stability"]
)
def test_experiment_quick(name, tmp_path, runs):
    seeds = ("0",) if name in ONE_SEED else ("0", "1")
    results, report, figures = _run(name, tmp_path / name, runs, seeds=["--seeds", str(len(seeds))])
    assert figures
    assert report.startswith(f"# {name} (quick)\n\n**Quick budgets are smoke tests**")
    assert results["wall_time_s"] > 0 and results["seeds"] == [int(s) for s in seeds]
    if name == "beta-sweep":
        for beta in ("1", "10", "100"):
            r = results[beta]
            _check_spread(r, "heldout_elbo")
            for seed in r["per_seed"].values():
                assert seed["heldout_elbo"] < 0 < seed["heldout_nll_importance_sampled"] <= -seed["heldout_elbo"] + 1.0
        assert [c["verdict"] for c in results["claims"]][0] in (
            study.REPRODUCED,
            study.NOT_REPRODUCED,
            study.INCONCLUSIVE,
        )
    if name == "label-smoothing":
        assert 0.5 < results["classifier_accuracy"] <= 1
        for label in ("with", "without"):
            _check_spread(results[label], "classifier_fid")
            assert all(v["classifier_fid"] > 0 for v in results[label]["per_seed"].values())
        assert len(results["claims"]) == 1
    if name == "flow-stability":
        _check_spread(results, "heldout_bits_per_dim", seeds)
        _check_spread(results, "largest_heldout_rise", seeds)
        assert all(len(c) >= 5 for c in results["heldout_curves"].values())
        assert 0 < results["heldout_bits_per_dim"] < 9
    if name == "latent-sweep":
        assert [results[k]["latent_dim"] for k in ("dcgan-z10", "beta-vae-z10", "beta-vae-z32")] == [10, 10, 32]
        _check_spread(results["beta-vae-z32"], "active_dims", seeds)
    if name == "evolution":
        _check_spread(results["RealNVP"], "bits_per_dim", seeds)
        _check_spread(results["VAE"], "elbo", seeds)


@pytest.mark.slow
def test_mode_collapse_quick(tmp_path, runs):
    """The quick budget (600 generator updates of the published toy protocol on ring8) is enough for WGAN-GP
    to learn the ring: fails if toy training breaks. One seed (its runs take most of a minute each; the
    other experiments check the aggregation over two)."""
    results, report, _ = _run("mode-collapse", tmp_path / "mc", runs, seeds=["--seeds", "1"])
    for model in ("dcgan", "wgan-gp", "wgan"):
        r = results["ring8"][model]
        _check_spread(r, "modes_covered", ("0",))
        _check_spread(r, "high_quality", ("0",))
        assert [h["generator_steps"] for h in r["history"]] == ([300, 600] if model == "wgan-gp" else [300])
    for model in ("dcgan", "wgan-gp"):  # the top-level ring8 entries
        assert set(results[model]) == {
            "modes_covered",
            "modes_covered_std",
            "high_quality",
            "high_quality_std",
            "per_seed",
        }
        assert results[model]["modes_covered"] == results["ring8"][model]["modes_covered"]
    # WGAN-GP has learnt the ring's shape. Seeds 0 and 1 reached 5 and 7 modes, high-quality 0.19 and 0.25, on an
    # AVX2 EPYC, and 7 or 8 modes on an AVX-512 Xeon (the two round differently); 100 updates in: 0 modes, 0.01
    assert results["wgan-gp"]["modes_covered"] >= 4 and results["wgan-gp"]["high_quality"] > 0.1, results["wgan-gp"]
    assert "WGAN-GP covers more modes of ring8" in report


@pytest.mark.slow
def test_all_writes_the_summary(tmp_path, runs):
    """`all` after the experiments above, with their first seed: every run is reused; one summary table and the
    verdicts (all inconclusive with one seed)."""
    assert study.main(["all", "--quick", "--seeds", "1", "--out", str(tmp_path), "--runs", str(runs)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "**Quick budgets are smoke tests**" in report.splitlines()[2]
    for name in study.RUNNERS:
        assert (tmp_path / name / "report.md").exists()
    assert "| [mode-collapse](mode-collapse/report.md) | ring8 wgan-gp: modes covered of 8 |" in report
    verdicts = re.findall(r"^\| .+ \| \*\*(.+?)\*\* \| .+ \|$", report, flags=re.M)
    assert len(verdicts) == 4  # mode collapse on ring8, label smoothing, beta, flow stability
    assert set(verdicts) == {study.INCONCLUSIVE}
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["experiments"]) == set(study.RUNNERS)
    assert all(r["seeds"] == [0] for r in results["experiments"].values())


def test_spread_matches_hand_computed_values():
    got = study.spread({0: {"a": 1.0, "b": 2.0}, 3: {"a": 3.0, "b": 2.0}, 7: {"a": 8.0, "b": 2.0}})
    assert got["a"] == pytest.approx(4.0) and got["a_std"] == pytest.approx(math.sqrt(13))  # (9 + 1 + 16) / 2
    assert got["b"] == 2.0 and got["b_std"] == 0.0
    assert got["per_seed"] == {"0": {"a": 1.0, "b": 2.0}, "3": {"a": 3.0, "b": 2.0}, "7": {"a": 8.0, "b": 2.0}}
    one = study.spread({5: {"a": 2.5}})
    assert one["a"] == 2.5 and one["a_std"] is None and study.pm(one, "a") == "2.50 (one seed)"
    assert study.pm(got, "a", 1) == "4.0 +- 3.6"


def test_verdicts():
    # d = 7.667 - 4 = 3.667; se = sqrt(1/3 / 3 + 1 / 3) = 2/3
    outcome, text = study.verdict([8, 8, 7], [3, 5, 4], 1)
    assert outcome == study.REPRODUCED and text == "difference +3.67 +- 1.3 (2 standard errors, 3 seeds)"
    assert study.verdict([8, 8, 8], [8, 8, 8], 1)[0] == study.NOT_REPRODUCED  # no difference, no spread
    assert study.verdict([2, 3, 2], [8, 7, 8], 1)[0] == study.NOT_REPRODUCED  # the opposite
    assert study.verdict([5, 8, 2], [4, 3, 7], 1)[0] == study.INCONCLUSIVE  # within the noise
    # d = 1, 2 se = 1.15: above zero is possible, and so is below the smallest effect that counts
    assert study.verdict([3, 2, 1], [1, 1, 1], 1)[0] == study.INCONCLUSIVE
    # d = 0.5 +- 0.115: a real difference, but smaller than the smallest that counts
    assert study.verdict([2.0, 2.1, 1.9], [1.5, 1.5, 1.5], 1)[0] == study.NOT_REPRODUCED
    assert study.verdict([8], [3], 1) == (study.INCONCLUSIVE, "one seed: no spread to judge a difference by")
    # a fixed threshold as `lower`: only the first sample varies
    assert study.verdict([0.2, 0.3, 0.25], 0.05, 0.0)[0] == study.REPRODUCED
    assert study.verdict([0.0, 0.01, 0.0], 0.05, 0.0)[0] == study.NOT_REPRODUCED


def test_seeds_option():
    assert study.parse_seeds("3") == [0, 1, 2] and study.parse_seeds("0,5,9") == [0, 5, 9]
    for bad in ("0", "1,1", "a", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            study.parse_seeds(bad)


def test_unknown_experiment_is_an_argparse_error():
    with pytest.raises(SystemExit):
        study.main(["nothing", "--out", "x"])


def test_a_run_trained_with_other_options_is_refused(tmp_path, capsys):
    """A finished run that an earlier study trained with other options (here the old 3-epoch quick VAE) is not
    reported as the run asked for."""
    run = tmp_path / "runs" / "vae-beta1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "study-options.json").write_text(
        json.dumps(["vae", "--data", "digits", "--beta", "1", "--epochs", "3", "--seed", "0"])
    )
    assert (
        study.main(
            ["beta-sweep", "--quick", "--seeds", "1", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "vae-beta1 was trained with `vae --data digits --beta 1 --epochs 3 --seed 0`" in err
    assert "--image-size 28 --epochs 20" in err
