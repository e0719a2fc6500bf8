"""Medians, ratios and targets from the raw results; the Markdown report."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

from bench.cases import BY_NAME, GROUPS

ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"
ANALYSIS_PLACEHOLDER = "_Write the analysis here: it is kept when the report is regenerated._"

MiB = 1024 * 1024


def ms(seconds: float | None) -> str:
    """Milliseconds with three significant figures."""
    if seconds is None:
        return "-"
    value = seconds * 1000
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f}"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- summary -----------------------------------------------------------------------------------


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per case: medians over runs and the median per-run ratio to its baseline; targets."""
    raw = results["cases"]
    by_run = {name: {row["run"]: row for row in entry["runs"]} for name, entry in raw.items()}
    cases: dict[str, Any] = {}
    for name, entry in raw.items():
        case = BY_NAME.get(name)
        rows = entry["runs"]
        item: dict[str, Any] = {
            "name": name,
            "group": case.group if case else "other",
            "label": case.label if case else name,
            "connections": case.connections if case else None,
            "params": dict(case.params) if case else {},
            "baseline": case.baseline if case else None,
            "status": entry["status"],
            "reason": entry.get("reason", ""),
            "failures": entry.get("failures", []),
            "runs": len(rows),
        }
        if rows:
            rps = [row["rps"] for row in rows]
            item.update(
                rps=statistics.median(rps),
                rps_min=min(rps),
                rps_max=max(rps),
                p50=_median([row["p50"] for row in rows]),
                p99=_median([row["p99"] for row in rows]),
                errors=sum(sum(row["errors"].values()) for row in rows),
                error_kinds=sorted({k for row in rows for k in row["errors"]}),
                requests=sum(row["requests"] for row in rows),
                server_cpu=_median([row["server_cpu"] for row in rows]),
                loadgen_cpu=_median([row["loadgen_cpu"] for row in rows]),
                other_cpu=_median([row.get("other_cpu") for row in rows]),
                uss_idle=_median([row["uss_idle"] for row in rows]),
                uss_loaded=_median([row["uss_loaded"] for row in rows]),
                uss_total=_median([row["uss_total"] for row in rows]),
                nworkers=rows[0]["nworkers"],
                server_cmd=rows[0]["server_cmd"],
                load_cmd=rows[0]["load_cmd"],
            )
            base = item["baseline"]
            if base and by_run.get(base):
                ratios = [
                    _ratio(row["rps"], by_run[base][row["run"]]["rps"])
                    for row in rows
                    if row["run"] in by_run[base]
                ]
                item["ratio"] = _median(ratios)
        cases[name] = item
    return {
        "meta": results["meta"],
        "cases": cases,
        "targets": targets(by_run),
    }


def _per_run(
    by_run: dict[str, dict[int, dict[str, Any]]],
    name: str,
    others: list[str],
    metric: Callable[[dict[str, Any]], float | None],
    pick: Callable[[list[dict[str, Any]]], dict[str, Any]] = lambda rows: max(
        rows, key=lambda r: r["rps"]
    ),
) -> float | None:
    """Median over runs of ``metric(name) / metric(best of others)`` in the same run."""
    ratios = []
    for run, row in by_run.get(name, {}).items():
        peers = [by_run[o][run] for o in others if run in by_run.get(o, {})]
        if peers:
            ratios.append(_ratio(metric(row), metric(pick(peers))))
    return _median(ratios)


TARGETS: list[dict[str, Any]] = [
    {"what": "prefork http.server hello vs stdlib ThreadingHTTPServer, req/s",
     "case": "prefork-http", "peers": ["stdlib-threading-http"], "metric": "rps",
     "goal": 10.0, "op": ">="},
    {"what": "prefork http.server hello vs gunicorn gthread (best of 2x4, 2x50), req/s",
     "case": "prefork-http", "peers": ["gunicorn-gthread-2x4", "gunicorn-gthread-2x50"],
     "metric": "rps", "goal": 1.8, "op": ">="},
    {"what": "... its p99 vs that gunicorn gthread's p99 (lower is better)",
     "case": "prefork-http", "peers": ["gunicorn-gthread-2x4", "gunicorn-gthread-2x50"],
     "metric": "p99", "goal": 1.0, "op": "<="},
    {"what": "prefork --wsgi vs gunicorn gthread (best of 2x4, 2x50), req/s",
     "case": "prefork-wsgi", "peers": ["gunicorn-gthread-2x4", "gunicorn-gthread-2x50"],
     "metric": "rps", "goal": 1.5, "op": ">="},
    {"what": "prefork --wsgi vs uWSGI 2x4 (50 connections, of which uWSGI serves 8), req/s",
     "case": "prefork-wsgi", "peers": ["uwsgi"], "metric": "rps", "goal": 1.0, "op": ">="},
    {"what": "prefork --wsgi vs uWSGI 2x4 at 8 connections (each serves all), req/s",
     "case": "prefork-wsgi-c8", "peers": ["uwsgi-c8"], "metric": "rps", "goal": 1.0,
     "op": ">="},
    {"what": "prefork --wsgi vs uWSGI 2x4 at 1000 connections, req/s",
     "case": "prefork-wsgi-c1000", "peers": ["uwsgi-c1000"], "metric": "rps", "goal": 0.8,
     "op": ">="},
    {"what": "prefork TCP echo vs stdlib ThreadingTCPServer, round trips/s",
     "case": "prefork-tcp", "peers": ["stdlib-threading-tcp"], "metric": "rps",
     "goal": 1.6, "op": ">="},
    {"what": "prefork UDP echo vs stdlib ThreadingUDPServer, round trips/s",
     "case": "prefork-udp", "peers": ["stdlib-threading-udp"], "metric": "rps",
     "goal": 1.6, "op": ">="},
    {"what": "prefork.ForkingMixIn vs stdlib ForkingMixIn (fork per connection), req/s",
     "case": "prefork-forking-http-close", "peers": ["stdlib-forking-http-close"],
     "metric": "rps", "goal": 1.0, "op": ">="},
    {"what": "idle worker USS: prefork http.server hello vs gunicorn gthread 2x4",
     "case": "prefork-http", "peers": ["gunicorn-gthread-2x4"], "metric": "uss_idle",
     "goal": 1.0, "op": "<="},
    {"what": "idle worker USS: prefork --wsgi vs gunicorn gthread 2x4",
     "case": "prefork-wsgi", "peers": ["gunicorn-gthread-2x4"], "metric": "uss_idle",
     "goal": 1.0, "op": "<="},
]  # fmt: skip


def targets(by_run: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured ratio and whether it is met (not asserted)."""
    out = []
    for target in TARGETS:
        ratio = _per_run(by_run, target["case"], target["peers"], itemgetter(target["metric"]))
        met = None
        if ratio is not None:
            met = ratio >= target["goal"] if target["op"] == ">=" else ratio <= target["goal"]
        missing = [n for n in [target["case"], *target["peers"]] if not by_run.get(n)]
        out.append({**target, "ratio": ratio, "met": met, "missing": missing})
    return out


# -- Markdown ----------------------------------------------------------------------------------


def _rps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _errors(item: dict[str, Any]) -> str:
    if not item.get("errors"):
        return "0"
    return f"{item['errors']:,} ({', '.join(item['error_kinds'])})"


def _case_row(item: dict[str, Any]) -> str:
    if item["status"] != "ok":
        why = _short(item["reason"]) or item["status"]
        return f"| `{item['name']}` | {item['label']} | {item['status']}: {_cell(why)} |" + (
            " |" * 7
        )
    ratio = item.get("ratio")
    base = item.get("baseline")
    vs = f"{ratio:.2f}x `{base}`" if ratio is not None else "-"
    cpu, loadgen_cpu = item.get("server_cpu"), item.get("loadgen_cpu")
    cells = [
        f"`{item['name']}`",
        item["label"],
        f"**{_rps(item['rps'])}**",
        f"{_rps(item['rps_min'])}-{_rps(item['rps_max'])}",
        vs,
        ms(item["p50"]),
        ms(item["p99"]),
        _errors(item),
        "-" if cpu is None else f"{cpu * 100:.0f}% / {(loadgen_cpu or 0) * 100:.0f}%",
        f"{mib(item['uss_idle'])} / {mib(item['uss_loaded'])} ({item['nworkers']})",
    ]
    return "| " + " | ".join(cells) + " |"


def _short(reason: str) -> str:
    """The first line of a failure, with the last line of the server's log if there is one."""
    lines = [line for line in reason.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] + (f" (last log line: {lines[-1].strip()[:160]})" if len(lines) > 1 else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


TABLE_HEAD = (
    "| case | server | req/s (median) | range | vs baseline | p50 ms | p99 ms | errors "
    "| CPU server / load gen | USS/worker MiB idle / loaded (workers) |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def _analysis_block(out: Path) -> str:
    """The hand-written analysis of an existing report, to keep it across regenerations."""
    try:
        text = out.read_text()
    except OSError:
        text = ""
    start, end = text.find(ANALYSIS_START), text.find(ANALYSIS_END)
    if start >= 0 and end > start:
        return text[start : end + len(ANALYSIS_END)]
    return f"{ANALYSIS_START}\n{ANALYSIS_PLACEHOLDER}\n{ANALYSIS_END}"


def render(
    results: dict[str, Any],
    summary: dict[str, Any],
    plots: dict[str, Path],
    plot_note: str,
    out: Path,
) -> str:
    meta = summary["meta"]
    cases = summary["cases"]
    versions = meta["versions"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench` (bench/run.py); edit only the analysis block. -->",
        "",
        f"Taken {meta['date']} with `{' '.join(meta['argv'])}`: each case's server started "
        f"fresh, warmed up for {meta['warmup']:g} s, then loaded for {meta['duration']:g} s "
        f"on 127.0.0.1, {meta['runs']} run(s) interleaved across the cases. Figures are "
        "medians over the runs (the range is min-max); a ratio is the median of the per-run "
        "ratios against the baseline measured in the same run. HTTP keep-alive load: "
        + (
            "`wrk` (2 threads, no Lua script)"
            if meta["loadgen"] == "wrk"
            else "the Python load generator (`bench/loadgen.py`)"
        )
        + "; connection-per-request load"
        + (
            ": the Python load generator"
            if meta.get("echo_loadgen") == "c"
            else " and TCP/UDP echo load: the Python load generator"
        )
        + f" ({meta['loadgen_procs']} processes, one epoll loop each, one request in flight "
        "per connection)"
        + _echo_loadgen_sentence(meta)
        + ". CPU is the CPU time of the server's processes (master and "
        "workers), and of the load generator, over the load, in percent of one core; USS "
        "is the unique memory of each worker process (of the process itself for "
        "single-process servers), idle = after start, before any load; a forking server's "
        "pages shared with live children are not unique, so its loaded USS can be lower.",
        "",
        "The load generator runs on the same machine and takes its share of the CPU: the "
        "numbers compare servers with each other on this machine, not absolute capacity.",
        "",
        "## Machine",
        "",
        f"- CPU: {meta['cpu']}, {meta['cores']} cores, {meta['memory']} memory; {meta['kernel']}",
        f"- load average at start {_loadavg(meta.get('loadavg_start'))}, at end "
        f"{_loadavg(meta.get('loadavg_end'))}; whole run {meta.get('elapsed', 0):.0f} s"
        + _other_load(cases),
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + (
            "; not installed: " + ", ".join(k for k, v in versions.items() if not v)
            if any(not v for v in versions.values())
            else ""
        ),
        "",
        "## Targets",
        "",
        "The performance issue's targets, measured (reported, not asserted):",
        "",
        "| target | goal | measured | met |",
        "|---|--:|--:|:-:|",
    ]
    for target in summary["targets"]:
        goal = f"{target['op']} {target['goal']:g}x"
        if target["ratio"] is None:
            measured = "not measured" + (
                f" ({', '.join(target['missing'])})" if target["missing"] else ""
            )
            met = "-"
        else:
            measured = f"{target['ratio']:.2f}x"
            met = "yes" if target["met"] else "**no**"
        lines.append(f"| {target['what']} | {goal} | {measured} | {met} |")
    lines += ["", "## Results", ""]
    for group, title in GROUPS.items():
        items = [c for c in cases.values() if c["group"] == group]
        if not items:
            continue
        lines += [f"### {title}", "", TABLE_HEAD]
        lines += [_case_row(item) for item in items]
        lines.append("")
        for key in (f"throughput-{group}", f"{group}"):
            if key in plots:
                lines += [f"![{title}]({_rel(plots[key], out)})", ""]
    for key, title in (("throughput", "Throughput per case"), ("p99", "p99 latency per case")):
        if key in plots:
            lines += [f"![{title}]({_rel(plots[key], out)})", ""]
    if plot_note:
        lines += [f"_{plot_note}_", ""]
    lines += _idle_memory(cases)
    skipped = [c for c in cases.values() if c["status"] != "ok" or c["failures"]]
    lines += ["## Skipped and failed cases", ""]
    if skipped:
        for item in skipped:
            reasons = [item["reason"]] if item["status"] != "ok" else item["failures"]
            text = "; ".join(_short(r) or item["status"] for r in reasons)
            lines.append(f"- `{item['name']}` ({item['status']}): {_cell(text)}")
    else:
        lines.append("None.")
    lines += ["", "## Exact commands", "", "One line per case: the server, then the load.", ""]
    lines.append("```sh")
    for item in cases.values():
        if item["status"] == "ok":
            lines.append(f"# {item['name']}")
            lines.append(item["server_cmd"])
            lines.append(item["load_cmd"])
    lines += ["```", "", "## Analysis", "", _analysis_block(out), ""]
    return "\n".join(lines)


def _idle_memory(cases: dict[str, Any]) -> list[str]:
    rows = [
        c
        for c in cases.values()
        if c["status"] == "ok" and c["group"] == "http" and c.get("uss_idle") is not None
    ]
    if not rows:
        return []
    lines = [
        "## Idle memory",
        "",
        "USS of one worker right after start (mean over the workers, median over the runs),"
        " and of the whole server (master included) after the load:",
        "",
        "| case | workers | idle USS/worker MiB | loaded USS/worker MiB | all processes MiB |",
        "|---|--:|--:|--:|--:|",
    ]
    for c in rows:
        lines.append(
            f"| `{c['name']}` | {c['nworkers']} | {mib(c['uss_idle'])} | "
            f"{mib(c['uss_loaded'])} | {mib(c['uss_total'])} |"
        )
    return [*lines, ""]


def _other_load(cases: dict[str, Any]) -> str:
    """How much CPU the rest of the machine took while the cases were measured."""
    values = [c["other_cpu"] for c in cases.values() if c.get("other_cpu") is not None]
    if not values:
        return ""
    return (
        f"; CPU taken by other processes during the measurements: median "
        f"{statistics.median(values) * 100:.0f}% of a core, up to {max(values) * 100:.0f}%"
    )


def _echo_loadgen_sentence(meta: dict[str, Any]) -> str:
    if meta.get("echo_loadgen") == "c":
        return (
            "; TCP/UDP echo load: `bench/echoload.c` (built with the machine's C compiler; "
            "one process, one epoll loop, one message in flight per connection: the same "
            "load as the Python generator's echo modes for a fraction of its CPU)"
        )
    note = meta.get("echo_loadgen_note")
    return f" (the C echo generator was not used: {note})" if note else ""


def _loadavg(value: Any) -> str:
    return "-" if not value else " ".join(f"{v:.2f}" for v in value)


def _rel(path: Path, out: Path) -> str:
    try:
        return str(path.resolve().relative_to(out.resolve().parent))
    except ValueError:
        return str(path)


def write(
    out: Path,
    results: dict[str, Any],
    summary: dict[str, Any],
    plots: dict[str, Path],
    plot_note: str = "",
) -> None:
    """Write the report to ``out`` (keeping its analysis block)."""
    text = render(results, summary, plots, plot_note, out)
    out.write_text(text)


def console_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the medians, for the terminal."""
    lines = [
        f"{'case':32} {'req/s':>10} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'CPU':>5}"
    ]
    for item in summary["cases"].values():
        if item["status"] != "ok":
            lines.append(f"{item['name']:32} {item['status']}: {item['reason'][:80]}")
            continue
        ratio = item.get("ratio")
        lines.append(
            f"{item['name']:32} {item['rps']:>10,.0f} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>7} {ms(item['p50']):>8} "
            f"{ms(item['p99']):>8} {item['errors']:>7} {item['server_cpu'] * 100:>4.0f}%"
        )
    return "\n".join(lines)
