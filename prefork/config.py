"""Where settings come from: defaults < config file < ``PREFORK_*`` environment < command line.

The config file is TOML: ``-c FILE`` (or ``PREFORK_CONFIG``) names it; without
one, ``prefork.toml`` in the working directory is read if it exists, else the
``[tool.prefork]`` table of ``pyproject.toml``.  Keys are the setting names of
:mod:`prefork.settings` (``max_requests`` or ``max-requests``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefork import settings
from prefork.errors import ConfigError

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
    for candidate in (cwd / "prefork.toml", cwd / "pyproject.toml"):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """The validated settings of a TOML config file (``[tool.prefork]`` of a pyproject)."""
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
