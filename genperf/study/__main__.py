import sys

from genperf.study.cli import main

sys.exit(main())
