"""python benchmarks/first_run.py: README's first command, run as written, timed and judged; writes docs/first-run.md.

Runs the last line of README's first bash block (the training command) in a fresh folder with tests/ beside it, as in
a clone, times it from the start of the process, and judges its samples with benchmarks/digit_check.py's classifier
(not genperf's code). Writes docs/first-run.md (machine, date, commit, time, held-out bits/dim, the classifier's
verdict) and copies the run's last sample grid to docs/img/first-run.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import digit_check
from bench_quality import commit
from readme_commands import bash_blocks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 240  # README's first run should show digits within 4 minutes of training on a 2-core CPU
PASS_FRACTION = 0.5


def first_command():
    """The training command that README's first bash block ends with."""
    return bash_blocks()[0].strip().splitlines()[-1]


def run_command(command, folder):
    """Runs `command` in `folder` (tests/ linked in); returns (seconds, stdout)."""
    os.symlink(os.path.join(REPO, "tests"), os.path.join(folder, "tests"))
    env = dict(os.environ, PYTHONPATH=REPO)
    start = time.perf_counter()
    argv = shlex.split(command)
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"first_run: {command} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def report(command, seconds, summary, verdict, grid_name):
    from genperf.perf import machine

    fraction, calibration, temperature = verdict["fraction"], verdict["calibration"], verdict["temperature"]
    size = verdict["size"]
    fast = "within" if summary["wall_time_s"] <= TARGET_S else "over"
    digits = "passes" if fraction >= PASS_FRACTION else "fails"
    return f"""# README's first run

{machine()}, {datetime.date.today()}, commit {commit()} (`python benchmarks/first_run.py`).

```bash
{command}
```

| | measured | target |
| --- | --- | --- |
| whole command (start of Python to exit) | {seconds:.0f} s | |
| training (the run's own wall time) | {summary["wall_time_s"]:.0f} s, {summary["steps"]} steps, \
{summary["images_per_s"]:.0f} images/s | {TARGET_S} s: {fast} |
| held-out bits/dim | {summary["heldout"]["bits_per_dim"]:.3f} | \
8 is uniform noise, about 1.1 a well-trained RealNVP at 28x28 |
| samples a digit classifier is sure of (p >= 0.9), of 64 at T={temperature:g} | {fraction:.0%} | \
{PASS_FRACTION:.0%}: {digits} |

![the run's last sample grid, 64 samples at temperature {temperature:g}](img/{grid_name})

The classifier (benchmarks/digit_check.py) is trained from scratch on the shipped images' first 9,000 at the run's
size ({size}x{size}), with an eleventh class of non-digits (pixel-shuffled digits, blobs, flat gray images), for \
{calibration["epochs"]} epochs, until it classifies {digit_check.TARGET_ACCURACY:.1%} of the last 1,000 correctly: \
it is {calibration["accuracy"]:.1%} accurate and sure of {calibration["digits_confident"]:.0%} of them; it is sure of \
{calibration["non_digits_confident"]:.0%} of 2,000 non-digits.
"""


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/first_run.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "docs", "first-run.md"))
    args = p.parse_args(argv)
    command = first_command()
    with tempfile.TemporaryDirectory() as folder:
        seconds, stdout = run_command(command, folder)
        out = os.path.join(folder, "runs", "realnvp")
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        samples, temperature, _ = digit_check.run_samples(out)
        size = samples.shape[-1]
        net, calibration = digit_check.train_classifier(size=size)
        fraction, _ = digit_check.confident_fraction(net, samples)
        grid_name = "first-run.png"
        shutil.copy(os.path.join(out, "samples", summary["samples"][-1]), os.path.join(REPO, "docs", "img", grid_name))
    verdict = dict(fraction=fraction, calibration=calibration, temperature=temperature, size=size)
    text = report(command, seconds, summary, verdict, grid_name)
    with open(args.out, "w") as f:
        f.write(text)
    print(stdout[stdout.index("genperf: done.") :] + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
