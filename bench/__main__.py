"""`python -m bench` (make bench): petrel side by side with SeaweedFS, Redis and local
files, in one run (bench/side_by_side.py)."""

import sys

from bench.side_by_side import main

sys.exit(main())
