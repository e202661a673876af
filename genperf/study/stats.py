"""The study's statistics: every number as the mean and sample standard deviation over seeds, and the verdict on
a claim of the source study from the seeds' spread."""

from __future__ import annotations

import math


def mean_std(values):
    """Mean and sample standard deviation (n - 1); the deviation is None for a single value."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def spread(per_seed):
    """{seed: {metric: value}} -> {metric: mean, metric_std: std, ..., "per_seed": {seed: {metric: value}}}."""
    keys = next(iter(per_seed.values())).keys()
    out = {}
    for key in keys:
        out[key], out[f"{key}_std"] = mean_std([values[key] for values in per_seed.values()])
    out["per_seed"] = {str(seed): dict(values) for seed, values in per_seed.items()}
    return out


def pm(entry, key, digits=2):
    std = entry[f"{key}_std"]
    return f"{entry[key]:.{digits}f}" + (f" +- {std:.{digits}f}" if std is not None else " (one seed)")


def values_of(entry, key):
    return [values[key] for values in entry["per_seed"].values()]


REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this budget"


def verdict(higher, lower, smallest):
    """The claim "higher exceeds lower by at least `smallest`" (lists of per-seed values, or a fixed number
    as `lower`), judged from the difference of means d and its standard error se (Welch): reproduced when
    d - 2 se >= smallest (the interval clears the smallest effect that counts), not reproduced when
    d + 2 se < smallest (the data rule such an effect out, or show the opposite), inconclusive when the
    interval straddles it. Returns (verdict, text)."""
    samples = [higher] if isinstance(lower, (int, float)) else [higher, lower]
    if any(len(v) < 2 for v in samples):
        return INCONCLUSIVE, "one seed: no spread to judge a difference by"
    stats = [mean_std(v) for v in samples]
    d = stats[0][0] - (stats[1][0] if len(stats) > 1 else lower)
    se = math.sqrt(sum(std**2 / len(v) for (_, std), v in zip(stats, samples)))
    text = f"difference {d:+.3g} +- {2 * se:.2g} (2 standard errors, {len(higher)} seeds)"
    if d + 2 * se < smallest:
        return NOT_REPRODUCED, text + f"; an effect of {smallest:.3g} or more is ruled out"
    if d - 2 * se >= smallest:
        return REPRODUCED, text
    return INCONCLUSIVE, text + f"; it may or may not reach {smallest:.3g}"


def late_gain(history, key):
    """How much `key` grew over the last third of training: the mean of the per-seed changes from the stage
    at two thirds of the budget to the last, two standard errors of it, and whether it clearly still rises."""
    first, last = history[2 * len(history) // 3 - 1]["per_seed"], history[-1]["per_seed"]
    gain, std = mean_std([last[seed][key] - first[seed][key] for seed in last])
    band = 0.0 if std is None else 2 * std / math.sqrt(len(last))
    return gain, band, std is not None and gain - band > 0
