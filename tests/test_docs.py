"""What a user reads first: README.md and every page under docs/ render (python-markdown), their links and images
resolve, their pictures stay small, they speak of genperf and not of how it was made, and README's commands run as
written."""

import os
import re
import shlex
import subprocess
import sys
from html.parser import HTMLParser

import markdown
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from readme_commands import bash_blocks  # noqa: E402

DOCS = sorted(
    os.path.relpath(os.path.join(folder, f), REPO)
    for folder, _, files in os.walk(os.path.join(REPO, "docs"))
    for f in files
    if f.endswith(".md")
)
PAGES = ["README.md", *DOCS]
MAX_PICTURE_BYTES = 300 * 1024


class _Targets(HTMLParser):
    """The href of every link and the src of every image of an HTML page."""

    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))


def _render(page):
    with open(os.path.join(REPO, page)) as f:
        text = f.read()
    return text, markdown.markdown(text, extensions=["tables", "fenced_code"])


def _local(target):
    return not re.match(r"[a-z]+:", target) and not target.startswith("#")


@pytest.mark.parametrize("page", PAGES)
def test_links_and_images_resolve_and_tables_render(page):
    text, html = _render(page)
    targets = _Targets()
    targets.feed(html)
    folder = os.path.dirname(os.path.join(REPO, page))
    for target in [t for t in targets.links + targets.images if _local(t)]:
        path = os.path.normpath(os.path.join(folder, target.split("#")[0]))
        assert os.path.exists(path), f"{page}: {target} does not exist"
        assert path.startswith(REPO + os.sep), f"{page}: {target} points outside the repository"
    for src in targets.images:
        path = os.path.join(folder, src)
        assert src.endswith(".png") and os.path.getsize(path) < MAX_PICTURE_BYTES, f"{page}: {src}"
    # Every table of the source (a header row followed by a |---| row) is a <table> once rendered.
    source_tables = len(re.findall(r"^\|.*\|\n\|[ :|-]+\|$", text, re.M))
    assert html.count("<table>") == source_tables, page


@pytest.mark.parametrize("page", PAGES)
def test_pages_speak_of_genperf_not_of_its_making(page):
    text, _ = _render(page)
    for phrase in ("../shared", "$OUT", "session", "lent ", "borrow", "device time", "this CPU", "this machine"):
        assert phrase not in text, f"{page} says {phrase!r}"
    assert not re.search(r"\bhere\)", text), f"{page} says 'here)' of some machine"


def test_readme_is_short_and_starts_with_pictures():
    text, html = _render("README.md")
    assert len(text.splitlines()) <= 200
    first_image, install = html.find("<img"), html.find("Install and first run")
    assert 0 < first_image < install


def test_the_first_command_trains_realnvp_with_amp_and_fsdp_on_shipped_data():
    """README's first block ends with the main command on data in the repository; benchmarks/first_run.py times and
    judges that line (docs/first-run.md)."""
    from first_run import first_command

    argv = shlex.split(first_command())
    assert argv[:4] == ["python", "-m", "genperf.train", "realnvp"] and "--amp" in argv and "--fsdp" in argv
    root = argv[argv.index("--data-root") + 1]
    assert os.path.exists(os.path.join(REPO, root, "t10k-images-idx3-ubyte.gz"))
    assert "first-run.md" in open(os.path.join(REPO, "README.md")).read()


def test_ci_runs_the_readme_test_command():
    """.ci/run runs README's second bash block; that block is the test command."""
    test_block = bash_blocks()[1]
    assert "pip install" in test_block and 'python -m pytest -q -m "not slow" tests' in test_block
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert "python3 benchmarks/readme_commands.py 1 >" in f.read()


def _short_commands():
    """README's genperf commands that name no placeholder (MODEL, DIR, [options]) and train in seconds."""
    commands = []
    for block in bash_blocks()[2:]:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python -m genperf.") and "[" not in line and not re.search(r"\b[A-Z]{2,}\b", line):
                if "genperf.study" not in line:  # hours of training
                    commands.append(line)
    return commands


@pytest.mark.slow  # about a minute: trains, samples and evaluates as README says
def test_readme_commands_run_as_written(tmp_path):
    """Run in a folder of their own (the runs/ they write land there), with tests/data beside them as in a clone."""
    os.symlink(os.path.join(REPO, "tests"), tmp_path / "tests")
    commands = _short_commands()
    assert any("genperf.train vae" in c for c in commands) and any("genperf.sample" in c for c in commands)
    env = dict(os.environ, PYTHONPATH=REPO)
    for command in commands:
        argv = shlex.split(command)
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{command}:\n{proc.stderr[-2000:]}"
    python_block = re.search(r"```python\n(.*?)```", _render("README.md")[0], re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", python_block], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
