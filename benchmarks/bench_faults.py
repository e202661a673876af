"""python benchmarks/bench_faults.py: the faults of many processes, each injected by its test, with what each cost.

Runs the tests of tests/test_faults_ranks.py that inject a fault into a two-rank gloo job (slow tier included;
about 4 minutes on a 2-core CPU), reads the seconds and steps each recorded, and writes them as a table into
docs/faults.md between its `bench_faults` markers, with the machine, date and commit. A test that fails leaves its
row saying so and the script exits 1. The bounds the tests assert are theirs; this only reports.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from bench_quality import commit, write_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = "tests/test_faults_ranks.py"
DOC = os.path.join(REPO, "docs", "faults.md")
BEGIN, END = "<!-- bench_faults: begin -->", "<!-- bench_faults: end -->"
# test id -> (the fault, what the seconds count up to)
FAULTS = {
    "test_a_killed_rank_ends_the_job_in_seconds_with_one_line_and_the_run_resumes[ddp]": (
        "rank 1 killed (SIGKILL), DDP",
        "exit",
    ),
    "test_a_killed_rank_ends_the_job_in_seconds_with_one_line_and_the_run_resumes[fsdp-during-a-save]": (
        "rank 1 killed (SIGKILL), FSDP2 with a sharded save every step",
        "exit",
    ),
    "test_a_stopped_rank_ends_the_job_within_the_steady_timeout_naming_it": (
        "rank 1 stopped (SIGSTOP), `--comm-timeout 3`",
        "exit",
    ),
    "test_a_rank_hung_outside_any_collective_ends_the_job_within_the_steady_timeout_naming_it[busy]": (
        "rank 1 busy outside any collective (an endless loop), `--comm-timeout 3`",
        "exit",
    ),
    "test_a_rank_hung_outside_any_collective_ends_the_job_within_the_steady_timeout_naming_it[asleep]": (
        "rank 1 asleep outside any collective (a read that never returns), `--comm-timeout 3`",
        "exit",
    ),
    "test_a_rank_that_raises_ends_the_job_with_one_line_and_its_traceback_in_the_run_folder[1]": (
        "rank 1 raising an exception alone",
        "exit",
    ),
    "test_a_rank_that_raises_ends_the_job_with_one_line_and_its_traceback_in_the_run_folder[0]": (
        "rank 0 raising an exception alone",
        "exit",
    ),
    "test_torchrun_restarts_resume_the_run_and_finish_its_steps_as_an_uninterrupted_one": (
        "rank 1 killed under `torchrun --max-restarts 2`",
        "resumed",
    ),
    "test_an_elastic_job_that_loses_a_node_finishes_on_the_other[--ddp]": (
        "the node of rank 1 lost under `torchrun --nnodes 1:2`, DDP",
        "resumed on one node",
    ),
    "test_an_elastic_job_that_loses_a_node_finishes_on_the_other[--fsdp]": (
        "the node of rank 1 lost under `torchrun --nnodes 1:2`, FSDP2 (shards resharded)",
        "resumed on one node",
    ),
}


def run_tests(report):
    """Runs FAULTS' tests, the slow ones too, with a JUnit report of their recorded properties; pytest's exit code."""
    ids = [f"{TESTS}::{test}" for test in FAULTS]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1", *ids]
    return subprocess.call([*cmd, f"--junitxml={report}"], cwd=REPO)


def results(report):
    """{test id: (passed, {property: value})} from the JUnit report."""
    found = {}
    for case in ET.parse(report).iter("testcase"):
        failed = any(child.tag in ("failure", "error", "skipped") for child in case)
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        found[case.get("name")] = (not failed, props)
    return found


def table(found):
    rows = ["| fault | seconds from the fault to the job's end or resumption | steps lost |", "| --- | --- | --- |"]
    for test, (fault, until) in FAULTS.items():
        passed, props = found.get(test, (False, {}))
        if not passed:
            rows.append(f"| {fault} | test failed or did not run | |")
        elif "seconds" not in props:
            rows.append(f"| {fault} | test passed but recorded nothing | |")
        else:
            rows.append(f"| {fault} | {props['seconds']} ({until}) | {props['steps_lost']} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/bench_faults.py", description=__doc__.split("\n")[0])
    p.add_argument("--no-write", action="store_true", help="print the table, leave docs/faults.md alone")
    args = p.parse_args(argv)
    from genperf.perf import machine

    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "faults.xml")
        code = run_tests(report)
        found = results(report) if os.path.exists(report) else {}
    text = (
        f"{machine()}, two gloo ranks, {datetime.date.today()}, commit {commit()} "
        f"(`python benchmarks/bench_faults.py`):\n\n{table(found)}"
    )
    print(text)
    if not args.no_write:
        write_section(DOC, text, BEGIN, END)
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
