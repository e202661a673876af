"""benchmarks/bench_faults.py: its faults are the fault tests there are, and its table says what each recorded."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_faults  # noqa: E402

REPORT = """<testsuites><testsuite>
<testcase classname="tests.test_faults_ranks" name="{passed}"><properties>
<property name="seconds" value="4.2"/><property name="steps_lost" value="5"/></properties></testcase>
<testcase classname="tests.test_faults_ranks" name="{failed}"><failure message="boom"/></testcase>
<testcase classname="tests.test_faults_ranks" name="{silent}"/>
</testsuite></testsuites>"""


def test_every_fault_named_is_a_test_that_exists():
    """A renamed or removed test would leave its row empty for ever, not fail."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", bench_faults.TESTS],
        cwd=bench_faults.REPO,
        capture_output=True,
        text=True,
    )
    collected = {line.split("::", 1)[1] for line in proc.stdout.splitlines() if "::" in line}
    assert collected, proc.stdout + proc.stderr
    assert set(bench_faults.FAULTS) <= collected, set(bench_faults.FAULTS) - collected


def test_the_table_gives_what_passing_tests_recorded_and_names_failures(tmp_path):
    passed, failed, silent, *missing = bench_faults.FAULTS
    (tmp_path / "r.xml").write_text(REPORT.format(passed=passed, failed=failed, silent=silent))
    rows = bench_faults.table(bench_faults.results(tmp_path / "r.xml")).splitlines()[2:]
    assert rows[0] == f"| {bench_faults.FAULTS[passed][0]} | 4.2 (exit) | 5 |"
    assert rows[1] == f"| {bench_faults.FAULTS[failed][0]} | test failed or did not run | |"
    assert rows[2] == f"| {bench_faults.FAULTS[silent][0]} | test passed but recorded nothing | |"
    assert all("did not run" in row for row in rows[3:]) and len(rows) == len(bench_faults.FAULTS)


def test_the_section_is_replaced_between_its_markers_alone(tmp_path):
    doc = tmp_path / "faults.md"
    doc.write_text(f"before\n{bench_faults.BEGIN}\nold table\n{bench_faults.END}\nafter\n")
    bench_faults.write_section(str(doc), "new table", bench_faults.BEGIN, bench_faults.END)
    assert doc.read_text() == f"before\n{bench_faults.BEGIN}\nnew table\n{bench_faults.END}\nafter\n"
    doc.write_text("no section yet\n")  # bench_recipe's first table: the section is appended
    bench_faults.write_section(str(doc), "table", bench_faults.BEGIN, bench_faults.END)
    assert doc.read_text() == f"no section yet\n\n{bench_faults.BEGIN}\ntable\n{bench_faults.END}\n"
