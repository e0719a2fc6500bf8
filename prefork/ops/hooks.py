"""Server hooks given in the config file, as gunicorn's are.

A hook is a function, written in a Python config file (``-c prefork.conf.py``)
or named ``MODULE:FUNCTION`` in the TOML file or a ``PREFORK_*`` variable.  It is
called with the server the command built (the one whose ``serve_forever()``
runs the master: its settings are attributes, ``server.workers`` and so on) and,
for the worker hooks, the :class:`~prefork.engine.process.WorkerProcess` concerned.

The hooks run beside a server class's own methods of the same name: the
command's part first, then the config file's function, then the class's
method (for ``MODULE:ServerClass`` applications).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefork.errors import ConfigError

logger = logging.getLogger("prefork.hooks")  # public: docs/operations.md, Logging


@dataclass(frozen=True)
class Hook:
    """One hook: its name, arguments and where and when it runs."""

    name: str
    arguments: tuple[str, ...]
    when: str


HOOKS: tuple[Hook, ...] = (
    Hook("on_starting", ("server",),
         "the master, once the sockets are bound, before the pidfile, privileges and first fork; "
         "an exception stops the start"),
    Hook("when_ready", ("server",), "the master, just before it forks the first workers"),
    Hook("pre_fork", ("server", "worker"), "the master, just before each worker is forked"),
    Hook("post_fork", ("server", "worker"),
         "the new worker, before it imports the application (close inherited database "
         "connections here); an exception is a boot failure"),
    Hook("post_worker_init", ("worker",),
         "the new worker, once the application is imported, before it serves; an exception "
         "is a boot failure"),
    Hook("worker_exit", ("server", "worker"), "the worker, as it exits"),
    Hook("on_reload", ("server",), "the master, on HUP, after the config is read again, before "
         "the new generation of workers is forked"),
    Hook("pre_exec", ("server",), "the child that becomes the new master on USR2, just before "
         "it executes the command again"),
    Hook("on_exit", ("server",), "the master, after the last worker is gone, as it exits"),
)  # fmt: skip

BY_NAME: dict[str, Hook] = {hook.name: hook for hook in HOOKS}


def reference_of(function: Callable[..., Any]) -> str:
    """How a hook function is shown: ``module:qualname``."""
    module = getattr(function, "__module__", None) or "?"
    return f"{module}:{getattr(function, '__qualname__', repr(function))}"


def hook_converter(name: str) -> Callable[[Any], Callable[..., Any] | None]:
    """The value type of the hook setting ``name``: a function, or ``MODULE:FUNCTION``."""
    hook = BY_NAME[name]
    signature = "(" + ", ".join(hook.arguments) + ")"

    def convert(value: Any) -> Callable[..., Any] | None:
        if value in (None, ""):
            return None
        if isinstance(value, str):
            from prefork.ops.appload import load_object

            try:
                value = load_object(value.strip())
            except ConfigError as exc:
                raise ValueError(f"a function MODULE:NAME; {exc}") from None
        if not callable(value):
            raise ValueError(f"a function taking {signature}")
        try:
            inspect.signature(value).bind(*hook.arguments)
        except TypeError:
            raise ValueError(
                f"a function taking {signature}, not {reference_of(value)}{_signature_text(value)}"
            ) from None
        except ValueError:  # no signature to inspect (a builtin): trust it
            pass
        return value

    convert.__doc__ = f"function {signature}, or MODULE:FUNCTION"
    return convert


def _signature_text(function: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return ""


def run_hook(settings: dict[str, Any], name: str, *args: Any, fatal: bool = False) -> None:
    """Call the configured hook ``name`` (if any) with ``args``.

    A hook that raises is logged with its traceback; the exception propagates only
    when ``fatal`` (a worker's boot hooks, ``on_starting``), so that a bug in a
    master hook cannot bring down a running master.
    """
    function = settings.get(name)
    if function is None:
        return
    try:
        function(*args)
    except Exception:
        if fatal:
            raise
        logger.exception("the %s hook (%s) failed", name, reference_of(function))
