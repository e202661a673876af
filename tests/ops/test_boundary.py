"""Bad arguments at the C++ boundary of every raw kernel op (torch.ops.genperf_kernels.*) raise a RuntimeError that
names the argument, on the device under test (GENPERF_TEST_DEVICE). The cases run in a child process, one after
another, so that a crash (a segmentation fault once killed the CUDA coupling's first failing check, and with it
the whole test run) fails the case it happened in while the others still run."""

import os
import re
import subprocess
import sys

import pytest
from _boundary_cases import cases
from _device import DEVICE, HAS_NATIVE

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boundary_cases.py")

pytestmark = pytest.mark.skipif(not HAS_NATIVE, reason="genperf._C has no kernels for this device")


def _case_names():
    return list(cases(DEVICE)) if HAS_NATIVE else []


def run_cases(names):
    """{name: ("raised", message) | ("returned", "") | ("crashed", how)}: every case run, a crashed child
    replaced by a new one for the cases after it."""
    outcomes, left = {}, list(names)
    while left:
        proc = subprocess.run([sys.executable, CHILD, str(DEVICE), *left], capture_output=True, text=True, timeout=300)
        for line in proc.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            name, _, message = rest.partition("\t")
            if kind in ("RAISED", "RETURNED"):
                outcomes[name] = (kind.lower(), message)
        started = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("STARTED ")]
        if proc.returncode:
            crashed = next((n for n in started if n not in outcomes), left[0])
            outcomes[crashed] = ("crashed", f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        left = [n for n in left if n not in outcomes]
    return outcomes


@pytest.fixture(scope="module")
def outcomes():
    return run_cases(_case_names())


@pytest.mark.parametrize("name", _case_names())
def test_a_bad_argument_raises_an_error_naming_it(outcomes, name):
    pattern = cases(DEVICE)[name][1]
    kind, message = outcomes[name]
    assert kind == "raised", f"{name}: {kind} {message}"
    assert re.search(pattern, message), f"{name}: {message!r} does not match {pattern!r}"


def test_a_crashing_case_fails_alone(monkeypatch):
    """The runner's own check: a child that dies in one case reports that case crashed and runs the rest."""
    real_run = subprocess.run

    def dying_in_the_second(cmd, **kwargs):
        if len(cmd) > 4:  # the first run, of every case: die after starting the second
            names = cmd[3:]
            out = f"STARTED {names[0]}\nRAISED {names[0]}\tcoupling: x must be\nSTARTED {names[1]}\n"
            return subprocess.CompletedProcess(cmd, -11, out, "Fatal Python error: Segmentation fault")
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", dying_in_the_second)
    names = _case_names()[:3]
    got = run_cases(names)
    assert got[names[0]][0] == "raised" and got[names[1]][0] == "crashed" and got[names[2]][0] == "raised"
    assert "Segmentation fault" in got[names[1]][1]
