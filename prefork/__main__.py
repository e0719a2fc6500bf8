"""``python -m prefork``: the same as the ``prefork`` command."""

import sys

from prefork.ops.cli import main

sys.exit(main())
