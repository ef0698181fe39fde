"""`python -m gateway` is the `customs` command."""

import sys

from gateway.cli import main

sys.exit(main())
