"""The study's figures and its summary report."""

from __future__ import annotations

import json
import os

from genperf.runlog import image_grid, pyplot, read_metrics
from genperf.study.runner import QUICK_WARNING, ran_on
from genperf.study.stats import values_of


def show_rows(rows, row_labels, title, col_labels=None):
    """A figure of image rows (each (K, C, H, W)), one labelled row each."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * rows[0].shape[0] + 1, 1.2 * len(rows) + 0.6), squeeze=False)
    for ax, row, label in zip(axes[:, 0], rows, row_labels):
        ax.imshow(
            image_grid(row, len(row), padding=1, pad_value=1.0).permute(1, 2, 0).numpy(),
            cmap="gray",
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    if col_labels:
        axes[0, 0].set_title("   ".join(col_labels), fontsize=8)
    fig.suptitle(title)
    # Half an inch for the title: by default a tall figure keeps 12% of its height above the first row.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig


def curves(run):
    """A run's (training, held-out) records of metrics.jsonl."""
    records = read_metrics(os.path.join(run, "metrics.jsonl"))
    return [r for r in records if r["split"] == "train"], [r for r in records if r["split"] == "heldout"]


def coverage_curves(results):
    """Modes covered and high-quality fraction against generator updates, mean over seeds +- 1 std."""
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.2 * len(results)), squeeze=False)
    for row, (toy, models) in zip(axes, results.items()):
        for ax, key in zip(row, ("modes_covered", "high_quality")):
            for model, r in models.items():
                x = [h["generator_steps"] for h in r["history"]]
                mean = [h[key] for h in r["history"]]
                std = [h[f"{key}_std"] or 0.0 for h in r["history"]]
                ax.plot(x, mean, "o-", ms=3, label=model)
                ax.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], alpha=0.2)
            ax.set_title(f"{toy}: {key.replace('_', ' ')}", fontsize=10)
            ax.set_xlabel("generator updates")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def seed_spread(entries, key, title, ylabel):
    """Each configuration's per-seed values (dots) and mean +- std (bar): {label: entry of spread()}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(entries) + 2, 3.2))
    for x, entry in enumerate(entries.values()):
        values = values_of(entry, key)
        ax.plot([x] * len(values), values, "o", color="0.5", ms=4)
        ax.errorbar([x + 0.15], [entry[key]], yerr=[entry[f"{key}_std"] or 0.0], fmt="s", color="tab:red", capsize=4)
    ax.set_xticks(range(len(entries)), list(entries))
    ax.set_xlim(-0.5, len(entries) - 0.5)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def write_summary(args, studies, seconds):
    """OUT/report.md of `study all`: every headline number with its spread, and the verdicts."""
    given = f" --seeds {','.join(map(str, args.seeds))}" if args.seeds else ""
    lines = [f"# The study{' (quick)' if args.quick else ''}", ""]
    if args.quick:
        lines += [QUICK_WARNING, ""]
    lines += [
        f"`python -m genperf.study all --out {args.out}{given}{' --quick' if args.quick else ''}`: "
        f"{seconds:.0f} s on {ran_on(args.device)} ("
        + ", ".join(f"{st.experiment} {st.seconds:.0f} s" for st in studies)
        + "). Each experiment's report, figures and numbers are in its own folder; m +- s is the mean over the "
        "seeds and their sample standard deviation.",
        "",
        "| experiment | quantity | mean +- std | seeds |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| [{exp}]({exp}/report.md) | {what} | {value} | {n} |"
        for st in studies
        for exp, what, value, n in st.headlines
    ]
    lines += [
        "",
        "## The source study's claims",
        "",
        "Judged from the seeds' spread (`genperf.study.verdict`): with d the difference of the means and se its "
        "standard error, *reproduced* when d - 2 se reaches the smallest effect the claim counts, *not "
        "reproduced* when d + 2 se stays below it (ruled out, or the opposite), *inconclusive at this budget* "
        "when the interval straddles it.",
        "",
        "| claim | verdict | evidence |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for st in studies for c in st.claims]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"wall_time_s": seconds, "experiments": {st.experiment: st.results for st in studies}}, f, indent=2)
