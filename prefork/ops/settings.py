"""Every setting of the ``prefork`` command, declared once.

The table :data:`SETTINGS` drives the command line, the ``PREFORK_*``
environment variables, the TOML config file, validation and the generated
settings reference, so none of them can drift from the others.  Precedence:
defaults < config file < environment < command line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefork.engine.trusted import LOCAL_PROXIES, TrustedProxies
from prefork.errors import ConfigError
from prefork.ops.hooks import HOOKS, hook_converter

ENV_PREFIX = "PREFORK_"


# -- value types: each takes a str (command line, environment) or a TOML value ------------------


def _integer(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("an integer")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"an integer >= {minimum}") from None
        if number < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return number

    convert.__doc__ = f"integer >= {minimum}"
    return convert


def _bounded(minimum: int, maximum: int) -> Callable[[Any], int]:
    base = _integer(minimum)

    def convert(value: Any) -> int:
        number = base(value)
        if number > maximum:
            raise ValueError(f"an integer from {minimum} to {maximum}")
        return number

    convert.__doc__ = f"integer from {minimum} to {maximum}"
    return convert


def _seconds(value: Any) -> float:
    """number of seconds > 0"""
    if isinstance(value, bool):
        raise ValueError("a number of seconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number of seconds") from None
    if not number > 0:
        raise ValueError("a number of seconds > 0")
    return number


def _boolean(value: Any) -> bool:
    """true/false"""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("true or false")


def _text(value: Any) -> str:
    """string"""
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _optional_text(value: Any) -> str | None:
    """string"""
    return None if value in (None, "") else _text(value)


def _trusted_addresses(value: Any) -> str:
    """comma-separated addresses, networks or *"""
    text = ",".join(value) if isinstance(value, list) else _text(value)
    TrustedProxies(text)  # raises ConfigError naming the bad entry
    return text


def _access_log_format(value: Any) -> str:
    """a %-format of access log atoms"""
    from prefork.http.access_log import AccessLog

    AccessLog(_text(value))  # raises ValueError naming the problem
    return str(value)


def _binds(value: Any) -> list[str]:
    """list of bind addresses"""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items) or not items:
        raise ValueError("a bind address or a list of them")
    from prefork.engine.listeners import parse_bind

    for item in items:
        parse_bind(item)  # raises ConfigError naming the bad one
    return list(items)


def _umask(value: Any) -> int:
    """octal umask such as 0o22 or 022"""
    from prefork.ops.privileges import parse_umask

    return parse_umask(value)


def _octal_mode(value: Any) -> int | None:
    """octal file mode such as 0o660"""
    if value in (None, ""):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise ValueError("an octal mode such as 0o660")
        mode = int(text, 8)
    if not 0 <= mode <= 0o7777:
        raise ValueError("an octal mode such as 0o660")
    return mode


def _log_level(value: Any) -> str:
    """debug, info, warning, error or critical"""
    text = str(value).strip().lower()
    if text not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError("one of debug, info, warning, error, critical")
    return text


def _memory(value: Any) -> int:
    """bytes, or a size with a K, M or G suffix (0: no limit)"""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)i?b?\s*", str(value).lower())
    if not match:
        raise ValueError("a size such as 512M")
    return int(match[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match[2]]


def _environment_pairs(value: Any) -> list[str]:
    """list of KEY=VALUE"""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ValueError("KEY=VALUE or a list of them")
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or "\0" in item:
            raise ValueError(f"KEY=VALUE, not {item!r}")
    return list(items)


def _optional_workers(value: Any) -> int | None:
    """integer >= 1 (default: the number of CPUs)"""
    return None if value in (None, "") else _integer(1)(value)


# -- the declaration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its name, where it can be given, its type and meaning."""

    name: str
    flags: tuple[str, ...]
    convert: Callable[[Any], Any]
    default: Any
    help: str
    section: str
    metavar: str | None = None
    flag_only: bool = False  # a command-line switch (store_true), not a value
    repeatable: bool = False  # --bind may be given several times
    reloadable: bool = True  # applied by HUP without a restart
    choices: tuple[str, ...] = field(default=())

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return ENV_PREFIX + self.name.upper()

    @property
    def kind(self) -> str:
        """What values it takes, for error messages and the reference."""
        return (self.convert.__doc__ or "").strip()


SETTINGS: tuple[Setting, ...] = (
    # server socket
    Setting("bind", ("-b", "--bind"), _binds, ["127.0.0.1:8000"],
            "Address to listen on: HOST:PORT, [IPV6]:PORT, tcp://HOST:PORT, udp://HOST:PORT, "
            "unix:PATH, unix-dgram:PATH or fd://N (also fd://NAME for a systemd socket). "
            "Repeat it to listen on several.", "server socket", "ADDRESS",
            repeatable=True, reloadable=False),
    Setting("backlog", ("--backlog",), _integer(1), 2048,
            "Listen backlog: connections the kernel queues while every worker is busy.",
            "server socket", "INT", reloadable=False),
    Setting("reuse_port", ("--reuse-port",), _boolean, False,
            "Set SO_REUSEPORT on the listening sockets.", "server socket",
            flag_only=True, reloadable=False),
    Setting("unix_socket_mode", ("--unix-socket-mode",), _octal_mode, None,
            "File mode of Unix socket files (octal, e.g. 0o660).", "server socket", "MODE",
            reloadable=False),
    # tls
    Setting("certfile", ("--certfile",), _optional_text, None,
            "Serve TLS with this PEM certificate (chain); each worker loads it when it starts, "
            "so HUP picks up a renewed one.", "tls", "FILE", reloadable=False),
    Setting("keyfile", ("--keyfile",), _optional_text, None,
            "The certificate's private key (default: in certfile).", "tls", "FILE",
            reloadable=False),
    Setting("ca_certs", ("--ca-certs",), _optional_text, None,
            "PEM file of the CAs that sign client certificates.", "tls", "FILE",
            reloadable=False),
    Setting("cert_reqs", ("--cert-reqs",), _integer(0), 0,
            "Client certificates: 0 not asked, 1 optional, 2 required (as gunicorn).",
            "tls", "INT", reloadable=False),
    Setting("ciphers", ("--ciphers",), _optional_text, None,
            "OpenSSL cipher list for TLS 1.2 and below (default: Python's).", "tls", "CIPHERS",
            reloadable=False),
    # workers
    Setting("workers", ("-w", "--workers"), _optional_workers, None,
            "Worker processes (default: the number of CPUs).", "worker processes", "INT"),
    Setting("threads", ("--threads",), _integer(1), 4,
            "Threads per worker; a worker accepts only while one is idle.",
            "worker processes", "INT"),
    Setting("timeout", ("-t", "--timeout"), _seconds, 30.0,
            "A worker silent this long, or with a request running this long, is stuck: a new "
            "worker replaces it at once, and its requests are cut graceful-timeout seconds "
            "later (30 s + 30 s with the defaults; its stacks go to the log).",
            "worker processes", "SECONDS"),
    Setting("graceful_timeout", ("--graceful-timeout",), _seconds, 30.0,
            "Seconds a stopping worker gets to finish its requests.",
            "worker processes", "SECONDS"),
    Setting("keepalive", ("--keep-alive",), _seconds, 5.0,
            "Seconds an idle HTTP keep-alive connection is kept open.",
            "worker processes", "SECONDS"),
    Setting("header_timeout", ("--header-timeout",), _seconds, 30.0,
            "Seconds an HTTP request head may take to arrive; then 408.",
            "worker processes", "SECONDS"),
    Setting("io_timeout", ("--io-timeout",), _seconds, 30.0,
            "Socket timeout while a thread serves an HTTP connection (bounds slow clients).",
            "worker processes", "SECONDS"),
    Setting("limit_request_line", ("--limit-request-line",), _bounded(0, 8190), 4094,
            "Most bytes in an HTTP request line (0: unlimited); longer gets 414.",
            "worker processes", "INT"),
    Setting("limit_request_fields", ("--limit-request-fields",), _bounded(0, 32768), 100,
            "Most header fields in an HTTP request (0: 32768); more gets 431.",
            "worker processes", "INT"),
    Setting("limit_request_field_size",
            ("--limit-request-field_size", "--limit-request-field-size"), _integer(0), 8190,
            "Most bytes in an HTTP request header line (0: unlimited); longer gets 431.",
            "worker processes", "INT"),
    Setting("forwarded_allow_ips", ("--forwarded-allow-ips",), _trusted_addresses,
            LOCAL_PROXIES,
            "Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (WSGI): "
            "addresses and networks, comma-separated, or '*'. Unix socket peers always are.",
            "worker processes", "ADDRESSES"),
    Setting("proxy_protocol", ("--proxy-protocol",), _boolean, False,
            "Connections from --proxy-allow-from peers start with a PROXY protocol header "
            "(v1 or v2: HAProxy, AWS NLB); the client address comes from it.",
            "worker processes", flag_only=True),
    Setting("proxy_allow_ips", ("--proxy-allow-from",), _trusted_addresses, LOCAL_PROXIES,
            "Peers that must send a PROXY header with --proxy-protocol: addresses and "
            "networks, comma-separated, or '*'.", "worker processes", "ADDRESSES"),
    Setting("max_requests", ("--max-requests",), _integer(0), 0,
            "Recycle a worker after this many requests (0: never).", "worker processes", "INT"),
    Setting("max_requests_jitter", ("--max-requests-jitter",), _integer(0), 0,
            "Add up to this many requests, at random, to max-requests.",
            "worker processes", "INT"),
    Setting("max_worker_memory", ("--max-worker-memory",), _memory, 0,
            "Gracefully recycle a worker whose resident memory passes this (e.g. 512M).",
            "worker processes", "SIZE"),
    Setting("rolling_reload", ("--rolling-reload",), _boolean, False,
            "On HUP replace one worker at a time instead of a whole generation.",
            "worker processes", flag_only=True),
    # application
    Setting("wsgi", ("--wsgi",), _boolean, False,
            "MODULE:OBJECT is a WSGI application, served by prefork's HTTP/1.1 handler.",
            "application", flag_only=True, reloadable=False),
    Setting("preload", ("--preload",), _boolean, False,
            "Import the application in the master before forking (HUP then does not "
            "pick up changed code).", "application", flag_only=True, reloadable=False),
    Setting("reload", ("--reload",), _boolean, False,
            "Development: restart the workers when a source file changes.",
            "application", flag_only=True, reloadable=False),
    # process
    Setting("pidfile", ("-p", "--pid"), _optional_text, None,
            "Write the master's pid to this file.", "process", "FILE", reloadable=False),
    Setting("proc_name", ("-n", "--name"), _optional_text, None,
            "Name shown in process titles.", "process", "NAME"),
    Setting("user", ("-u", "--user"), _optional_text, None,
            "Switch worker and master to this user after binding.", "process", "USER",
            reloadable=False),
    Setting("group", ("-g", "--group"), _optional_text, None,
            "Switch to this group after binding.", "process", "GROUP", reloadable=False),
    Setting("umask", ("-m", "--umask"), _umask, 0o022,
            "Umask of the master and workers (octal).", "process", "UMASK",
            reloadable=False),
    Setting("chdir", ("--chdir",), _optional_text, None,
            "Change to this directory before loading the application (and import from it).",
            "process", "DIR", reloadable=False),
    Setting("raw_env", ("-e", "--env"), _environment_pairs, [],
            "Set an environment variable for the master and workers: KEY=VALUE. Repeat it "
            "for several.", "process", "KEY=VALUE", repeatable=True),
    # logging
    Setting("loglevel", ("--log-level",), _log_level, "info",
            "Log level: debug, info, warning, error, critical.", "logging", "LEVEL"),
    Setting("logfile", ("--log-file",), _optional_text, None,
            "Log to this file instead of stderr ('-' is stderr); USR1 reopens it.",
            "logging", "FILE"),
    Setting("capture_output", ("--capture-output",), _boolean, False,
            "Redirect the master's and workers' stdout and stderr into --log-file "
            "(print(), wsgi.errors, http.server's request lines).", "logging",
            flag_only=True, reloadable=False),
    Setting("accesslog", ("--access-logfile",), _optional_text, None,
            "Write an access log line per WSGI request to this file ('-' is stdout); "
            "off by default; USR1 reopens it.", "logging", "FILE"),
    Setting("access_log_format", ("--access-logformat",), _access_log_format,
            '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
            "The access log's format, in gunicorn's atoms (the default is the combined "
            "log format).", "logging", "FORMAT"),
    Setting("logconfig", ("--log-config",), _optional_text, None,
            "A logging dictConfig in a TOML or JSON file.", "logging", "FILE"),
    Setting("metrics_bind", ("--metrics-bind",), _optional_text, None,
            "Serve Prometheus metrics on this HOST:PORT (or unix:PATH), from the master.",
            "logging", "ADDRESS", reloadable=False),
    # server hooks: config file (or PREFORK_* as MODULE:FUNCTION) only
    *(Setting(hook.name, (), hook_converter(hook.name), None, f"Called in {hook.when}.",
              "server hooks") for hook in HOOKS),
)  # fmt: skip

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def defaults() -> dict[str, Any]:
    """Every setting at its default value."""
    return {s.name: (list(s.default) if s.repeatable else s.default) for s in SETTINGS}


def _normalise_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def _convert(setting: Setting, value: Any, origin: str) -> Any:
    try:
        return setting.convert(value)
    except ValueError as exc:
        raise ConfigError(
            f"{origin}: bad value {value!r} for {setting.name}: expected {exc}"
        ) from None


def from_mapping(values: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Validate a config file's table: unknown keys and bad values are refused."""
    result = {}
    for key, value in values.items():
        name = _normalise_key(key)
        setting = BY_NAME.get(name)
        if setting is None:
            raise ConfigError(f"{origin}: unknown setting {key!r}")
        result[name] = _convert(setting, value, origin)
    return result


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``PREFORK_*`` variables (``PREFORK_BIND`` takes a comma list)."""
    result = {}
    for setting in SETTINGS:
        if setting.env not in environ:
            continue
        raw: Any = environ[setting.env]
        if setting.repeatable:
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        result[setting.name] = _convert(setting, raw, setting.env)
    return result


#: ``PREFORK_*`` variables that are not settings but are the command's own.
OTHER_VARIABLES = frozenset({"PREFORK_CONFIG", "PREFORK_UPGRADED_FROM", "PREFORK_INHERITED_FDS"})


#: Settings that are file modes, shown in octal.
OCTAL_SETTINGS = frozenset({"umask", "unix_socket_mode"})


def shown_value(name: str, value: Any) -> Any:
    """A setting's value as a user writes it: modes in octal (``"0o022"``, not 18)."""
    if name in OCTAL_SETTINGS and isinstance(value, int):
        return f"0o{value:03o}"
    return value


def shown_default(setting: Setting) -> str:
    """A setting's default as ``--help`` shows it (``30``, not ``30.0``)."""
    value = shown_value(setting.name, setting.default)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return ", ".join(value) if isinstance(value, list) else str(value)


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``PREFORK_*`` variable that is no setting (a typo, most often)."""
    import difflib

    known = {setting.env for setting in SETTINGS}
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or name in OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a setting, ignored{hint}")
    return warnings


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid by each layer in turn."""
    result = defaults()
    for layer in layers:
        result.update(layer)
    return result


def reference() -> str:
    """The settings reference in Markdown, generated from :data:`SETTINGS`."""
    lines = [
        "# Settings",
        "",
        "Generated from `prefork/ops/settings.py` by `python -m prefork.ops.settings`;"
        " do not edit.",
        "Precedence: defaults < config file < `PREFORK_*` environment < command line.",
        "In a config file (TOML, or `[tool.prefork]` in `pyproject.toml`) use the names below.",
    ]
    section = None
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            lines += ["", f"## {section.capitalize()}"]
        default = "the number of CPUs" if s.name == "workers" else f"`{s.default!r}`"
        flags = ", ".join(f"`{flag}`" for flag in s.flags) or "config file"
        lines += [
            "",
            f"### `{s.name}`",
            "",
            f"{flags} · `{s.env}` · default {default} · {s.kind}",
            "",
            s.help,
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
