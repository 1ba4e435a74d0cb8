"""`python -m petrel` is the `petrel` command."""

import sys

from petrel.cli.main import main

sys.exit(main())
