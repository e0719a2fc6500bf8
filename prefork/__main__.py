"""``python -m prefork``: the same as the ``prefork`` command."""

import sys

from prefork.cli import main

sys.exit(main())
