"""Where settings come from: defaults < config file < ``PREFORK_*`` environment < command line.

The config file is TOML, or Python as gunicorn's is: ``-c FILE`` (or
``PREFORK_CONFIG``) names it; without one, ``prefork.toml`` in the working
directory is read if it exists, else ``prefork.conf.py``, else the
``[tool.prefork]`` table of ``pyproject.toml``.  Keys are the setting names of
:mod:`prefork.ops.settings` (``max_requests`` or ``max-requests``).

A Python file is executed; its top-level names that are settings are taken
(server hooks are functions of the hook's name), names starting with ``_``,
modules and other functions and classes are ignored, and any other name gets a
warning, since it is most likely a misspelt setting.
"""

from __future__ import annotations

import difflib
import inspect
import os
import runpy
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefork.errors import ConfigError
from prefork.ops import settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

CONFIG_ENV = "PREFORK_CONFIG"


def find_config_file(explicit: str | None, cwd: Path) -> Path | None:
    """The config file to read: the one named, else ``prefork.toml``, else ``pyproject.toml``."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return path
    for candidate in (cwd / "prefork.toml", cwd / "prefork.conf.py", cwd / "pyproject.toml"):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """The validated settings of a config file (``[tool.prefork]`` of a pyproject)."""
    if path.suffix == ".py":
        return settings.from_mapping(_python_settings(path), str(path))
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if path.name == "pyproject.toml":
        table = document.get("tool", {}).get("prefork", {})
        origin = f"{path} [tool.prefork]"
    else:
        table, origin = document, str(path)
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: expected a table of settings")
    return settings.from_mapping(table, origin)


def load(
    command_line: Mapping[str, Any],
    config_path: str | None,
    environ: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """All settings, merged in precedence order, and the config file read (if any)."""
    path = find_config_file(config_path or environ.get(CONFIG_ENV), cwd or Path.cwd())
    from_file = read_config_file(path) if path else {}
    return settings.merged(from_file, settings.from_environment(environ), command_line), path


def _python_settings(path: Path) -> dict[str, Any]:
    """The settings a Python config file defines (it is executed)."""
    try:
        namespace = runpy.run_path(str(path), run_name="__config__")
    except SystemExit as exc:
        raise ConfigError(f"config file {path}: exited ({exc.code})") from None
    except BaseException as exc:
        raise ConfigError(f"config file {path}{_where(exc, path)}: {_one_line(exc)}") from None
    found = {}
    for key, value in namespace.items():
        name = key.replace("-", "_").lower()
        if key.startswith("_") or inspect.ismodule(value):
            continue
        if name in settings.BY_NAME:
            found[key] = value
            continue
        close = difflib.get_close_matches(name, list(settings.BY_NAME), n=1)
        if callable(value) and not close:
            continue  # a helper function or class of the file's own
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"prefork: warning: {path}: {key} is not a setting{hint}", file=sys.stderr)
    return found


def _where(exc: BaseException, path: Path) -> str:
    """``, line N`` of the deepest frame of the config file in a traceback."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f", line {exc.lineno}"
    resolved = str(path.resolve())
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename and os.path.abspath(frame.filename) == resolved
    ]
    return f", line {lines[-1]}" if lines else ""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
