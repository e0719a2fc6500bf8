"""``python -m bench``: run the benchmark cases and write the report."""

from __future__ import annotations

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
