"""The C echo load generator (``bench/echoload.c``): built on demand, used for TCP/UDP echo.

The Python generator (:mod:`bench.loadgen`) spends as much CPU per echo round trip as the
servers it loads, so on a small machine it holds a core the server could have used.  The C
program makes the same load (one 64-byte message in flight per connection) and prints the
same JSON result for a fraction of the CPU.  :func:`build` compiles it with the machine's C
compiler into a directory of the caller's; without a compiler the harness keeps the Python
generator and says so in the report.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("echoload.c")


def compiler() -> str | None:
    """The C compiler to build with (``$CC`` is not consulted: ``cc``, else ``gcc``)."""
    return shutil.which("cc") or shutil.which("gcc")


def build(directory: Path) -> tuple[Path | None, str]:
    """Compile ``echoload.c`` into ``directory``: ``(binary, "")`` or ``(None, why not)``."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc or gcc) found"
    binary = directory / "echoload"
    cmd = [cc, "-O2", "-o", str(binary), str(SOURCE), "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{cc} failed: {exc}"
    if done.returncode != 0:
        return None, f"{cc} failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return binary, ""


def command(
    binary: Path, mode: str, port: int, connections: int, duration: float, timeout: str
) -> list[str]:
    """The command line of one C generator process (``timeout``: seconds, as text)."""
    return [
        str(binary), mode, "--port", str(port), "--connections", str(connections),
        "--duration", str(duration), "--timeout", timeout,
    ]  # fmt: skip
