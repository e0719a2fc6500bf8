"""Finding the application the command serves: ``MODULE:OBJECT``.

The object is one of three kinds:

* a request handler class (``socketserver.BaseRequestHandler`` or prefork's);
  an ``http.server.BaseHTTPRequestHandler`` subclass gets ``HTTPServer``
  semantics;
* a server class (``socketserver.BaseServer`` or prefork's);
* with ``--wsgi``, a WSGI application (any callable).

Unless ``--preload`` is given, the master never imports the application: it
checks it in a short-lived child process, and every worker imports it afresh,
so that ``HUP`` picks up changed code.
"""

from __future__ import annotations

import enum
import importlib
import json
import os
import socketserver as stdlib_socketserver
import sys
import traceback
from typing import Any

from prefork.core.children import ChildProcesses, fork_child
from prefork.core.handlers import BaseRequestHandler
from prefork.core.server import BaseServer
from prefork.engine.tracebacks import user_traceback
from prefork.errors import ConfigError


class AppKind(str, enum.Enum):
    """What ``MODULE:OBJECT`` turned out to be."""

    HTTP_HANDLER = "http-handler"
    HANDLER = "handler"
    SERVER = "server"
    WSGI = "wsgi"


def split_reference(reference: str) -> tuple[str, str]:
    """``"pkg.mod:obj.attr"`` -> ``("pkg.mod", "obj.attr")``; ConfigError if malformed."""
    module, sep, name = reference.partition(":")
    if not sep or not module or not name:
        hint = " (only --wsgi takes MODULE alone, as MODULE:application)" if not sep else ""
        raise ConfigError(f"bad application {reference!r}: expected MODULE:OBJECT{hint}")
    return module, name


def load_object(reference: str) -> Any:
    """Import ``MODULE`` (from the working directory first) and return ``OBJECT``."""
    module_name, attribute = split_reference(reference)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"cannot import {module_name!r}: no such module") from None
        raise ApplicationImportError.of(module_name, exc) from None
    except Exception as exc:
        raise ApplicationImportError.of(module_name, exc) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no object {attribute!r}") from None
    return target


class ApplicationImportError(ConfigError):
    """The application's own code raised while it was imported.

    The message stays one line; :attr:`user_traceback` holds the frames of the
    user's code (prefork's and importlib's trimmed), for the log and stderr.
    """

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback

    @classmethod
    def of(cls, module_name: str, exc: BaseException) -> ApplicationImportError:
        """The error for ``exc``, raised while importing ``module_name``."""
        return cls(f"cannot import {module_name!r}: {_one_line(exc)}", user_traceback(exc))


def classify(obj: Any, *, wsgi: bool, reference: str) -> AppKind:
    """Which kind of application ``obj`` is; ConfigError when it is none of them."""
    import http.server

    if wsgi:
        if not callable(obj) or isinstance(obj, type):
            raise ConfigError(f"{reference} is not a WSGI application (a callable)")
        return AppKind.WSGI
    if isinstance(obj, type):
        if issubclass(obj, http.server.BaseHTTPRequestHandler):
            return AppKind.HTTP_HANDLER
        if issubclass(obj, (stdlib_socketserver.BaseRequestHandler, BaseRequestHandler)):
            return AppKind.HANDLER
        if issubclass(obj, (stdlib_socketserver.BaseServer, BaseServer)):
            return AppKind.SERVER
    hint = " (for a WSGI application, add --wsgi)" if callable(obj) else ""
    raise ConfigError(f"{reference} is not a request handler class or a server class{hint}")


def application_sources() -> list[str]:
    """Source files of the modules imported from the working directory (not installed ones)."""
    root = os.getcwd() + os.sep
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(root) and "site-packages" not in path:
            files.add(path)
    return sorted(files)


def probe(reference: str, *, wsgi: bool) -> tuple[AppKind, list[str]]:
    """Import and classify the application in a throwaway child process.

    The master learns the kind, that the import works and which source files
    it read (for ``--reload``), without running the application's import-time
    code itself.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)

    def child() -> int:
        os.close(read_fd)
        try:
            obj = load_object(reference)
            kind = classify(obj, wsgi=wsgi, reference=reference)
            answer: dict[str, Any] = {"kind": kind.value, "sources": application_sources()}
        except ConfigError as exc:
            answer = {"error": str(exc), "traceback": getattr(exc, "user_traceback", "")}
        except BaseException as exc:
            traceback.print_exc()
            answer = {"error": f"{reference}: {_one_line(exc)}"}
        with os.fdopen(write_fd, "w") as pipe:
            json.dump(answer, pipe)
        return 0

    children = ChildProcesses()
    try:
        children.add(fork_child(child))
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    children.reap(blocking=True)
    try:
        answer = json.loads(text)
    except ValueError:
        raise ConfigError(f"cannot load {reference}: the import crashed the process") from None
    if "error" in answer:
        raise ApplicationImportError(answer["error"], answer.get("traceback", ""))
    return AppKind(answer["kind"]), list(answer["sources"])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
