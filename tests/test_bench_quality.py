"""benchmarks/bench_quality.py's two sides: the baseline trains with RealNVP's published recipe at the study's batch,
genperf with its defaults, and --genperf-options adds options to genperf's side alone."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_quality  # noqa: E402

from genperf import config  # noqa: E402


def parsed(variant):
    return config.parse_args(bench_quality.variant_argv("realnvp", variant, seed=3))


def test_the_baseline_keeps_the_published_recipe_and_the_studys_batch():
    args = parsed("baseline")
    assert (args.lr, args.warmup, args.lr_schedule) == (1e-3, 0, "constant")
    assert args.batch_size == 64 and args.backend == "reference" and args.compile == "off" and not args.amp
    assert (args.num_scales, args.mid_channels, args.num_blocks, args.seed) == (2, 32, 4, 3)


def test_genperf_options_reach_genperf_alone():
    default, raced = parsed("genperf"), parsed("genperf --lr 2.5e-3 --warmup 50")
    assert default.amp and default.batch_size == 16 and default.lr == 5e-3  # realnvp's defaults on a CPU
    assert (raced.lr, raced.warmup, raced.batch_size, raced.amp) == (2.5e-3, 50, 16, True)
    assert bench_quality.batch_size("realnvp", "genperf --batch-size 32") == 32


def test_an_unknown_option_is_refused_as_genperf_train_refuses_it():
    with pytest.raises(SystemExit):
        parsed("genperf --no-such-option 1")


def test_the_table_reports_medians_ranges_and_time_to_the_baselines_final_median():
    # curves: (seconds of training, step, held-out metric), the first at 0 s
    baseline = [[(0, 0, 9.0), (46, 20, 6.0), (120, 50, 4.0)], [(0, 0, 9.0), (46, 22, 5.0), (120, 54, 5.0)]]
    genperf = [[(0, 0, 9.0), (46, 70, 4.5), (120, 200, 3.0)], [(0, 0, 9.0), (46, 80, 3.5), (120, 210, 2.0)]]
    rows, target, reached = bench_quality.summarize("realnvp", {"baseline": baseline, "genperf": genperf}, [46, 120])
    assert target == 4.5  # the baseline's median at the whole budget
    assert reached == {"baseline": [120, None], "genperf": [46, 46]}
    table = bench_quality.markdown("realnvp", rows, target, reached, [46, 120]).splitlines()
    assert table[2] == "| 46 s | 5.500 [5.000-6.000] (21 steps) | 4.000 [3.500-4.500] (75 steps) |"
    assert table[3] == "| 2 min | 4.500 [4.000-5.000] (52 steps) | 2.500 [2.000-3.000] (205 steps) |"
    assert table[4] == "| time to 4.500 | 2.0 min (1/2 seeds) | 0.8 min (2/2 seeds) |"
