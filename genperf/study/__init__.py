"""python -m genperf.study: the study's experiments, reproduced with seeds and verdicts.

runner.py       Study: trains through genperf.fit, reuses and resumes run folders, collects a report
stats.py        mean and spread over seeds, the verdict rule
report.py       figures and the summary report
experiments.py  the seven experiments (RUNNERS)
cli.py          the command line
"""

from genperf.study.cli import DEFAULT_SEEDS, default_seeds, main, parse_seeds
from genperf.study.experiments import RUNNERS
from genperf.study.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, mean_std, pm, spread, values_of, verdict

__all__ = [
    "DEFAULT_SEEDS",
    "INCONCLUSIVE",
    "NOT_REPRODUCED",
    "REPRODUCED",
    "RUNNERS",
    "default_seeds",
    "main",
    "mean_std",
    "parse_seeds",
    "pm",
    "spread",
    "values_of",
    "verdict",
]
