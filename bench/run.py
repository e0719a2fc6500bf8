"""The benchmark harness: ``python -m bench [--quick] [--cases ...] [--runs N] ...``.

For each run, for each selected case: start the server fresh (port 0 where it can, else a
free port picked just before, retried on ``EADDRINUSE``), wait until its port answers, take
its idle memory, warm it up, load it for ``--duration`` seconds with ``wrk`` (keep-alive
HTTP, when installed), the C echo generator (:mod:`bench.echoload`, TCP/UDP echo, when a C
compiler is there) or the Python load generator (:mod:`bench.loadgen`, everything else),
sample its CPU time and memory, and stop it by pid.  Runs are interleaved (case A, B, C,
then A, B, C again) so that noise on a shared machine spreads over every case; each figure
quoted is the median over the runs, and each ratio the median of the per-run ratios.
Results go to a Markdown report with PNG plots (``--out``), and raw to JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

if not __package__:  # ``python bench/run.py``: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cases as casesmod
from bench import echoload, loadgen, procs, report, wrk
from bench.cases import Case, Env

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run prefork's side-by-side benchmarks and write the report.",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up load")
    parser.add_argument("--runs", type=int, default=3, help="runs per case (median quoted)")
    parser.add_argument("--cases", help="comma-separated case names, groups or globs")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: 1 run of ~1.5 s per case"
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="HTTP load generator (auto: wrk when installed)",
    )
    parser.add_argument(
        "--loadgen-procs", type=int, default=2, help="processes of the Python load generator"
    )
    parser.add_argument(
        "--echo-loadgen",
        choices=("auto", "c", "python"),
        default="auto",
        help="TCP/UDP echo load generator (auto: bench/echoload.c when a C compiler is found)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report")
    parser.add_argument(
        "--img-dir", type=Path, help="where the PNG plots go (default: img/ beside --out)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="raw results")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    parser.add_argument(
        "--from-json", type=Path, help="only render the report from a previous --json"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 1.5)
        args.warmup = min(args.warmup, 0.3)
        args.runs = 1
    if args.runs < 1 or args.duration <= 0:
        parser.error("--runs and --duration must be positive")
    return args


# -- machine and versions ------------------------------------------------------------------


def _command_output(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def _module_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The machine and software the numbers were taken on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    commit = _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "prefork"])
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "prefork": f"{_module_version('prefork')} (git {commit or '?'}"
        + (", prefork/ modified)" if dirty else ")"),
    }
    for name in ("gunicorn", "waitress", "granian", "pyuwsgi", "psutil", "matplotlib"):
        versions[name] = _module_version(name)
    nginx = _command_output([shutil.which("nginx") or "/usr/sbin/nginx", "-v"])
    versions["nginx"] = nginx.rpartition("/")[2] if "nginx version" in nginx else None
    wrk_path = wrk.available()
    versions["wrk"] = _command_output([wrk_path, "-v"]).split()[1] if wrk_path else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "versions": versions,
        "loadavg_start": os.getloadavg(),
    }


def _raise_nofile() -> None:
    """1000 connections need more than the usual 1024 descriptors (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- load ------------------------------------------------------------------------------------


class Harness:
    """Everything one invocation shares: settings, temp dir, environment."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and wrk.available())
        if args.loadgen == "wrk" and not wrk.available():
            raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        self.env = dict(os.environ)
        path = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.echo_binary: Path | None = None
        self.echo_note = "not asked for (--echo-loadgen python)"
        if args.echo_loadgen != "python":
            self.echo_binary, self.echo_note = echoload.build(tmp)
            if self.echo_binary is None and args.echo_loadgen == "c":
                raise SystemExit(f"--echo-loadgen c: {self.echo_note}")

    def uses_wrk(self, case: Case) -> bool:
        """``wrk`` for keep-alive HTTP only: with ``Connection: close`` it counts every
        connection the server closes as a read error, so the Python generator does that."""
        return bool(self.use_wrk) and case.load == "http"

    def load(self, case: Case, port: int, duration: float) -> tuple[dict[str, Any], str]:
        """Load the server for ``duration`` s; the result and the command that made it."""
        if self.uses_wrk(case):
            url = f"http://127.0.0.1:{port}/"
            cmd = wrk.command(url, case.connections, duration)
            result, _ = wrk.run(cmd, timeout=duration + 30)
            return result, shlex.join(cmd)
        return self._generator_load(case, port, duration)

    def c_echo_binary(self, case: Case) -> Path | None:
        """The C generator for ``case`` (TCP/UDP echo, when it was built), else ``None``."""
        return self.echo_binary if case.load in ("tcp", "udp") else None

    def _generator_load(
        self, case: Case, port: int, duration: float
    ) -> tuple[dict[str, Any], str]:
        """Load from the Python generator's processes, or from one C echo generator."""
        timeout = "1" if case.load == "udp" else "5"
        c_binary = self.c_echo_binary(case)
        if c_binary is not None:
            shares = [case.connections]
            cmds = [
                echoload.command(c_binary, case.load, port, case.connections, duration, timeout)
            ]
        else:
            nprocs = max(1, min(self.args.loadgen_procs, case.connections))
            shares = [
                case.connections // nprocs + (i < case.connections % nprocs) for i in range(nprocs)
            ]
            cmds = [
                [sys.executable, "-m", "bench.loadgen", case.load, "--port", str(port),
                 "--connections", str(n), "--duration", str(duration), "--timeout", timeout]
                for n in shares
            ]  # fmt: skip
        children = [
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=self.env,
            )
            for cmd in cmds
        ]
        outputs = []
        failure = None
        for child in children:
            try:
                out, err = child.communicate(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
                failure = failure or "the load generator did not finish in time"
            if child.returncode != 0 and not failure:
                failure = f"load generator failed: {err.decode(errors='replace')[-400:]}"
            outputs.append(out)
        if failure:
            raise RuntimeError(failure)
        merged = loadgen.merge([json.loads(out) for out in outputs])
        hist = {int(k): v for k, v in merged["hist"].items()}
        result = {
            "requests": merged["requests"],
            "elapsed": merged["elapsed"],
            "rps": merged["requests"] / merged["elapsed"] if merged["elapsed"] else 0.0,
            "p50": loadgen.percentile(hist, 0.50),
            "p99": loadgen.percentile(hist, 0.99),
            "errors": merged["errors"],
        }
        shown = [*cmds[0]]
        shown[shown.index("--connections") + 1] = f"{shares[0]}"
        if c_binary is not None:
            shown[0] = "bench/echoload"  # built from bench/echoload.c with cc -O2
        return result, f"{len(cmds)} x " + shlex.join(shown)

    # -- one measurement -------------------------------------------------------------------

    def start(self, case: Case, workdir: Path) -> procs.Server:
        """Start ``case``'s server fresh and wait until it answers."""
        last: Exception | None = None
        for attempt in range(3):
            kind = socket.SOCK_DGRAM if case.load == "udp" else socket.SOCK_STREAM
            port = 0 if case.port_pattern else procs.free_port(kind)
            env = Env(port=port, tmp=workdir)
            if case.setup:
                case.setup(env)
            server = procs.Server(
                case.name,
                case.argv(env),
                workdir / f"server-{attempt}.log",
                case.load,
                port=port,
                workers_are_children=case.workers > 0,
            )
            try:
                server.start(ROOT, self.env, case.port_pattern, expected_workers=case.workers)
            except procs.StartError as exc:
                server.stop()
                last = exc
                if not case.port_pattern and server.address_in_use():
                    continue
                raise
            except BaseException:
                server.stop()
                raise
            return server
        raise procs.StartError(f"port kept being taken: {last}")

    def measure(self, case: Case, run: int) -> dict[str, Any]:
        """One run of one case: the figures, and the commands used."""
        workdir = self.tmp / f"{case.name}-run{run}"
        workdir.mkdir(parents=True, exist_ok=True)
        server = self.start(case, workdir)
        try:
            time.sleep(0.3 if self.args.quick else 0.5)
            idle = [procs.uss(p) for p in server.workers()]
            if self.args.warmup > 0:
                self.load(case, server.port, self.args.warmup)
            before = procs.cpu_seconds(server.remember())
            ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            machine_before = _busy_cpu_seconds()
            started = time.monotonic()
            result, load_cmd = self.load(case, server.port, self.args.duration)
            wall = time.monotonic() - started
            ru_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            machine_after = _busy_cpu_seconds()
            after = procs.cpu_seconds(server.remember())
            workers = server.workers()
            loaded = [procs.uss(p) for p in workers]
            total_uss = [procs.uss(p) for p in procs.tree(server.pid)]
        finally:
            server.stop()
        loadgen_cpu = (ru_after.ru_utime + ru_after.ru_stime) - (
            ru_before.ru_utime + ru_before.ru_stime
        )
        server_cpu = (after - before) / wall
        return {
            **result,
            "server_cpu": server_cpu,
            "loadgen_cpu": loadgen_cpu / wall,
            # Everything else the machine ran meanwhile (other users, this harness).
            "other_cpu": max(
                0.0, (machine_after - machine_before) / wall - server_cpu - loadgen_cpu / wall
            ),
            "uss_idle": _mean([u for u in idle if u]),
            "uss_loaded": _mean([u for u in loaded if u]),
            "uss_total": sum(u for u in total_uss if u),
            "nworkers": len(workers),
            "server_cmd": _shown(server.command),
            "load_cmd": _shown_str(load_cmd),
            "pid": server.pid,
        }


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (every core, every process) so far."""
    times = psutil.cpu_times()
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0)


def _mean(values: list[int]) -> float | None:
    return statistics.fmean(values) if values else None


def _shown(cmd: list[str]) -> str:
    """A command line as the report shows it: this venv's Python as ``python``, its scripts
    (``uwsgi``) by name."""
    scripts = str(Path(sys.executable).parent) + os.sep
    shown = ["python" if part == sys.executable else part.removeprefix(scripts) for part in cmd]
    return shlex.join(shown)


def _shown_str(cmd: str) -> str:
    return cmd.replace(shlex.quote(sys.executable), "python")


# -- the whole run ---------------------------------------------------------------------------


def run_all(args: argparse.Namespace, selected: list[Case], tmp: Path) -> dict[str, Any]:
    harness = Harness(args, tmp)
    results: dict[str, Any] = {
        "meta": {
            **machine(),
            "argv": ["python", "-m", "bench", *(args.argv or [])],
            "duration": args.duration,
            "warmup": args.warmup,
            "runs": args.runs,
            "loadgen": "wrk" if harness.use_wrk else "python",
            "loadgen_procs": args.loadgen_procs,
            "echo_loadgen": "c" if harness.echo_binary else "python",
            "echo_loadgen_note": harness.echo_note,
        },
        "cases": {},
    }
    for case in selected:
        absent = casesmod.missing(case)
        results["cases"][case.name] = {
            "status": "skipped" if absent else "pending",
            "reason": f"not installed: {', '.join(absent)}" if absent else "",
            "runs": [],
            "failures": [],
        }
    started = time.monotonic()
    for run in range(args.runs):
        for case in selected:
            entry = results["cases"][case.name]
            if entry["status"] in ("skipped", "failed"):
                continue
            t0 = time.monotonic()
            try:
                row = harness.measure(case, run)
            except (procs.StartError, RuntimeError, ValueError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                entry["failures"].append(reason)
                if not entry["runs"]:
                    entry["status"] = "failed"
                    entry["reason"] = reason
                print(f"[run {run + 1}/{args.runs}] {case.name}: FAILED {reason}", flush=True)
                continue
            row["run"] = run
            entry["runs"].append(row)
            entry["status"] = "ok"
            print(
                f"[run {run + 1}/{args.runs}] {case.name}: {row['rps']:,.0f} req/s, "
                f"p99 {report.ms(row['p99'])} ms, errors {sum(row['errors'].values())}, "
                f"server CPU {row['server_cpu'] * 100:.0f}% "
                f"({time.monotonic() - t0:.1f}s)",
                flush=True,
            )
    results["meta"]["elapsed"] = time.monotonic() - started
    results["meta"]["loadavg_end"] = os.getloadavg()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    if args.list:
        for case in casesmod.CASES:
            absent = casesmod.missing(case)
            note = f"  (not installed: {', '.join(absent)})" if absent else ""
            print(f"{case.name:30} {case.group:6} {case.label}{note}")
        return 0
    img_dir = args.img_dir or args.out.parent / "img"
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        try:
            selected = casesmod.select(args.cases)
        except ValueError as exc:
            print(f"python -m bench: {exc}", file=sys.stderr)
            return 2
        _raise_nofile()
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            results = run_all(args, selected, args.log_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="prefork-bench-") as tmp:
                results = run_all(args, selected, Path(tmp))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    summary = report.summarise(results)
    plots: dict[str, Path] = {}
    plot_note = ""
    if not args.no_plots:
        try:
            from bench import plots as plotsmod
        except ImportError as exc:
            plot_note = f"plots not drawn: {exc} (pip install -e '.[bench]')"
        else:
            img_dir.mkdir(parents=True, exist_ok=True)
            plots = plotsmod.draw(summary, img_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report.write(args.out, results, summary, plots, plot_note)
    print(report.console_table(summary))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
