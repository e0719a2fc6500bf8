"""The ``prefork`` command.  Until the operations release it only explains itself."""

from __future__ import annotations

import sys

import prefork

USAGE = """\
usage: prefork [--version] [--help]

prefork {version}: a multi-process prefork server engine with the socketserver API.

The full command line (prefork [OPTIONS] MODULE:OBJECT) is not available yet.
Run an example server instead:

    python -m prefork.examples.hello --port 8000    # then: curl http://127.0.0.1:8000/
    python -m prefork.examples.echo --port 9000     # then: nc 127.0.0.1 9000
"""


def main(argv: list[str] | None = None) -> int:
    """Print the usage (or the version); exit 2 on anything else."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        print(f"prefork {prefork.__version__}")
        return 0
    text = USAGE.format(version=prefork.__version__)
    if args in ([], ["-h"], ["--help"]):
        print(text, end="")
        return 0
    print(text, end="", file=sys.stderr)
    print(f"prefork: unrecognised arguments: {' '.join(args)}", file=sys.stderr)
    return 2
