"""Running ``wrk`` (no Lua script) and reading its report."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_VALUE = r"([\d.]+)(us|ms|s|m|h)"


def available() -> str | None:
    """The path of ``wrk``, if it is installed."""
    return shutil.which("wrk")


def command(
    url: str, connections: int, duration: float, threads: int = 2, close: bool = False
) -> list[str]:
    """The ``wrk`` command line for a keep-alive or a connection-per-request load."""
    threads = max(1, min(threads, connections))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    if close:
        cmd += ["-H", "Connection: close"]
    return [*cmd, url]


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(output: str) -> dict[str, Any]:
    """Requests, duration, rate, p50/p99 (seconds) and errors from ``wrk --latency`` output."""
    total = re.search(r"(\d+) requests in " + _VALUE, output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not total or not rate:
        raise ValueError(f"unexpected wrk output: {output[-400:]!r}")
    result: dict[str, Any] = {
        "requests": int(total.group(1)),
        "elapsed": _seconds(total.group(2), total.group(3)),
        "rps": float(rate.group(1)),
        "errors": {},
    }
    for label, key in (("50%", "p50"), ("99%", "p99")):
        match = re.search(rf"^\s+{re.escape(label)}\s+" + _VALUE, output, re.MULTILINE)
        result[key] = _seconds(match.group(1), match.group(2)) if match else None
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        for kind, count in zip(
            ("connect", "read", "write", "timeout"), errors.groups(), strict=True
        ):
            if int(count):
                result["errors"][kind] = int(count)
    status = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if status:
        result["errors"]["status"] = int(status.group(1))
    return result


def run(cmd: list[str], timeout: float) -> tuple[dict[str, Any], str]:
    """Run ``wrk``; return the parsed report and its raw output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with status {done.returncode}: {output[-400:]}")
    return parse(output), output
