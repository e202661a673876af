"""python benchmarks/audit_step.py MODEL [training options] [--warmup N] [--audit-steps K] [--table N] [--json F]

Counts what one steady-state training step of `python -m genperf.train MODEL [training options]` launches,
synchronizes, casts and re-lays out, on whatever device it is given (genperf.audit has the details)."""

import sys

from genperf.audit import main

if __name__ == "__main__":
    sys.exit(main())
