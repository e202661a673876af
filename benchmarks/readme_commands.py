"""python3 benchmarks/readme_commands.py N: prints README.md's Nth bash block (from 0: 0 installs and trains, 1
installs and runs the tests). The one reader of those blocks, for CI, benchmarks/first_run.py and the docs' tests;
standard library only, since CI runs it before anything is installed."""

import os
import re
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def bash_blocks(path=README):
    """The contents of every ```bash block of `path`, in order."""
    with open(path) as f:
        return re.findall(r"```bash\n(.*?)```", f.read(), re.S)


if __name__ == "__main__":
    print(bash_blocks()[int(sys.argv[1])], end="")
