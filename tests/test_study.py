"""Every experiment of python -m genperf.study runs with --quick and writes its report, figures and results."""
import json
import re

import pytest

from genperf import study


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")  # shared: experiments reuse each other's trained models


def _run(name, tmp_path, runs):
    out = tmp_path / name
    assert study.main([name, "--quick", "--out", str(out), "--runs", str(runs)]) == 0
    report = (out / "report.md").read_text()
    figures = re.findall(r"^!\[.*\]\((.+\.png)\)$", report, flags=re.M)
    assert figures and all((out / f).exists() for f in figures), figures  # every figure the report shows exists
    return json.loads((out / "results.json").read_text()), report


@pytest.mark.parametrize("name", ["evolution", "interpolation", "latent-sweep", "label-smoothing", "beta-sweep",
                                  "flow-stability"])
def test_experiment_quick(name, tmp_path, runs):
    results, report = _run(name, tmp_path, runs)
    assert report.startswith(f"# {name} (quick)") and results["wall_time_s"] > 0
    if name == "beta-sweep":
        for beta in ("1", "10", "100"):
            r = results[beta]
            assert r["heldout_elbo"] < 0 and 0 < r["heldout_nll_importance_sampled"] <= -r["heldout_elbo"] + 1.0
    if name == "label-smoothing":
        assert 0.5 < results["classifier_accuracy"] <= 1
        assert results["with"]["classifier_fid"] > 0 and results["without"]["classifier_fid"] > 0
    if name == "flow-stability":
        assert len(results["heldout_curve"]) >= 5 and 0 < results["heldout_bits_per_dim"] < 9
    if name == "latent-sweep":
        assert [results[k]["latent_dim"] for k in ("dcgan-z10", "beta-vae-z10", "beta-vae-z32")] == [10, 10, 32]


def test_mode_collapse_quick(tmp_path, runs):
    results, _ = _run("mode-collapse", tmp_path, runs)
    for model in ("dcgan", "wgan-gp"):
        assert set(results[model]) == {"modes_covered", "high_quality"}
        assert 0 <= results[model]["modes_covered"] <= 8 and 0 <= results[model]["high_quality"] <= 1
        assert len(results["grid25"][model]["history"]) == 2


def test_unknown_experiment_is_an_argparse_error():
    with pytest.raises(SystemExit):
        study.main(["nothing", "--out", "x"])
