"""The ``prefork`` command: ``prefork [OPTIONS] MODULE:OBJECT`` and ``prefork status``.

Options mirror gunicorn's where they mean the same; every one is declared in
:mod:`prefork.ops.settings`, which also reads them from the config file and the
``PREFORK_*`` environment.  A mistake (bad option, address in use, missing
module...) prints one line ``prefork: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

import prefork
from prefork.errors import ConfigError
from prefork.ops import config, settings

DESCRIPTION = """\
Serve MODULE:OBJECT with a master process and a pool of worker processes.
OBJECT is a socketserver request handler class (http.server handlers get
HTTPServer semantics), a server class, or with --wsgi a WSGI application."""

EPILOG = """\
signals to the master:
  HUP          reload: re-read the config, start new workers, then stop the old
  TERM         graceful shutdown      INT, QUIT   fast shutdown
  TTIN, TTOU   one worker more/less   USR1        reopen log files
  USR2         upgrade: start a new master on the same sockets (then TERM the old)
  WINCH        stop all workers, keep the master

examples:
  prefork prefork.examples.hello:HelloHandler
  prefork -w 4 --threads 8 -b 0.0.0.0:8000 -b unix:/run/app.sock myapp:Handler
  prefork --wsgi -b 127.0.0.1:8000 myproject.wsgi:application
  prefork status -p /run/prefork.pid"""


#: gunicorn options prefork does not have, with what to use instead.
GUNICORN_ONLY = {
    "-k": "prefork has one worker type, processes of --threads threads (gunicorn's gthread)",
    "--worker-class": "prefork has one worker type, processes of --threads threads"
    " (gunicorn's gthread)",
    "--worker-connections": "each worker serves --threads requests at a time",
    "-D": "prefork does not daemonize; run it under systemd or another supervisor",
    "--daemon": "prefork does not daemonize; run it under systemd or another supervisor",
    "--paste": "serve the WSGI application as MODULE:OBJECT with --wsgi",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"prefork: {message} (see prefork --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Parse, refusing an unknown option by its name (not by the value that follows it)."""
        unknown = self.unknown_option(list(sys.argv[1:] if args is None else args))
        if unknown:
            self.error(unknown)
        return super().parse_args(args, namespace)

    def unknown_option(self, args: list[str]) -> str:
        """``"unrecognized option -k; ..."`` for the first unknown option in ``args``."""
        options = self._option_string_actions
        expects_value = False
        for arg in args:
            if expects_value:
                expects_value = False
                continue
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-" or _is_number(arg):
                continue
            if arg.startswith("--"):
                name, attached = arg.partition("=")[0], "=" in arg
                action = _by_prefix(options, name)
            else:
                name, attached = arg[:2], len(arg) > 2
                action = options.get(name)
            if action is None:
                return _unrecognized(name, sorted(options))
            expects_value = action.nargs != 0 and not attached
        return ""


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``prefork [OPTIONS] MODULE:OBJECT``, generated from the settings."""
    parser = _Parser(
        prog="prefork",
        usage="prefork [OPTIONS] MODULE:OBJECT\n       prefork status [--pid FILE] [--json]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("app", nargs="?", metavar="MODULE:OBJECT", help="what to serve")
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--check-config", action="store_true", help="check the settings and application, then exit"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the settings as JSON, then exit"
    )
    parser.add_argument(
        "-v", "--version", action="version", version=f"prefork {prefork.__version__}"
    )
    groups: dict[str, Any] = {}
    for setting in settings.SETTINGS:
        if not setting.flags:  # server hooks: functions, given in the config file
            continue
        group = groups.get(setting.section)
        if group is None:
            group = groups[setting.section] = parser.add_argument_group(setting.section)
        if setting.flag_only:
            group.add_argument(
                *setting.flags, dest=setting.name, action="store_true", help=setting.help
            )
            continue
        help_text = setting.help
        if setting.default not in (None, []):
            help_text += f" (default: {settings.shown_default(setting)})"
        group.add_argument(
            *setting.flags,
            dest=setting.name,
            metavar=setting.metavar,
            action="append" if setting.repeatable else "store",
            help=help_text.replace("%", "%%"),
        )
    return parser


def _by_prefix(options: dict[str, Any], name: str) -> Any:
    """The action of long option ``name`` or of the one option it abbreviates."""
    if name in options:
        return options[name]
    matches = {action for flag, action in options.items() if flag.startswith(name)}
    return matches.pop() if len(matches) == 1 else None


def _unrecognized(name: str, known: list[str]) -> str:
    import difflib

    text = f"unrecognized option {name}"
    if name in GUNICORN_ONLY:
        return f"{text}: a gunicorn option; {GUNICORN_ONLY[name]}"
    close = difflib.get_close_matches(name, [flag for flag in known if flag.startswith("--")], n=1)
    return f"{text}; did you mean {close[0]}?" if close else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def command_line_settings(namespace: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, validated."""
    given = {
        s.name: getattr(namespace, s.name) for s in settings.SETTINGS if hasattr(namespace, s.name)
    }
    return settings.from_mapping(given, "command line")


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns its exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["status"]:
        from prefork.ops import status

        return status.main(args[1:])
    namespace = build_parser().parse_args(args)
    try:
        return run(namespace)
    except ConfigError as exc:
        print(f"prefork: {exc}", file=sys.stderr)
        if getattr(exc, "user_traceback", ""):  # where the user's code failed to import
            print(exc.user_traceback, end="", file=sys.stderr)  # type: ignore[attr-defined]
        return 2


def run(namespace: argparse.Namespace) -> int:
    """Validate, bind, and serve until stopped."""
    from prefork.ops.command import Command, apply_environment, change_directory
    from prefork.ops.logs import configure_logging

    app = getattr(namespace, "app", None)
    for warning in settings.unknown_environment(os.environ):
        print(f"prefork: warning: {warning}", file=sys.stderr)
    cli = command_line_settings(namespace)
    launch_dir = os.getcwd()
    config_path = getattr(namespace, "config", None) or os.environ.get(config.CONFIG_ENV)
    if config_path:  # read again on HUP, after --chdir
        config_path = os.path.abspath(config_path)
    values, _ = config.load(cli, config_path)
    if getattr(namespace, "print_config", False):
        shown = {name: settings.shown_value(name, value) for name, value in values.items()}
        print(json.dumps(shown, indent=2, sort_keys=True, default=_printable))
        return 0
    if not app:
        raise ConfigError("no application given: prefork [OPTIONS] MODULE:OBJECT (see --help)")
    if values["wsgi"] and ":" not in app:
        app = f"{app}:application"  # gunicorn's default object name
    change_directory(values["chdir"])
    apply_environment(values["raw_env"])
    os.umask(values["umask"])  # before any file is created, the log file included
    configure_logging(
        values["loglevel"],
        values["logfile"],
        values["logconfig"],
        capture_output=values["capture_output"],
        access_logfile=values["accesslog"],
    )
    command = Command(app, values, cli, config_path)
    command.launch_dir = launch_dir
    command.load_application()
    if getattr(namespace, "check_config", False):
        binds = command.check_binds()
        kind = command.kind.value if command.kind else "?"
        print(f"prefork: the configuration is valid: {app} loads as a {kind} application,"
              f" and {', '.join(binds)} can be bound.")  # fmt: skip
        return 0
    return command.serve()


def _printable(value: Any) -> str:
    """JSON for what is not: a hook function is shown as ``module:name``."""
    from prefork.ops.hooks import reference_of

    return reference_of(value) if callable(value) else repr(value)
