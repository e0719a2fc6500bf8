"""What ``prefork MODULE:OBJECT`` runs: the server built from settings, and its master's duties.

:func:`build` turns validated settings into a :class:`~prefork.engine.PreforkMixIn`
server with one sub-server per bind; :func:`serve` runs it with the pidfile,
privileges, systemd notifications, config reload on ``HUP`` and the
zero-downtime upgrade on ``USR2``.
"""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import prefork
from prefork.engine import PreforkMixIn, listeners
from prefork.engine.listeners import Bind
from prefork.errors import ConfigError
from prefork.ops import config, systemd
from prefork.ops.appload import AppKind, application_sources, classify, load_object, probe
from prefork.ops.binding import Binding
from prefork.ops.hooks import run_hook
from prefork.ops.pidfile import Pidfile
from prefork.ops.reloader import SourceWatcher
from prefork.ops.upgrade import UPGRADED_FROM_ENV, Upgrade

logger = logging.getLogger("prefork.command")  # public: docs/operations.md, Logging

#: Settings copied onto the server class (setting name -> engine attribute).
ENGINE_ATTRIBUTES = {
    "workers": "workers",
    "threads": "threads",
    "timeout": "worker_timeout",
    "graceful_timeout": "graceful_timeout",
    "keepalive": "keepalive_timeout",
    "header_timeout": "header_timeout",
    "io_timeout": "io_timeout",
    "max_requests": "max_requests",
    "max_requests_jitter": "max_requests_jitter",
    "max_worker_memory": "max_worker_memory",
    "rolling_reload": "rolling_reload",
    "proc_name": "proc_name",
    "metrics_bind": "metrics_bind",
    "limit_request_line": "limit_request_line",
    "limit_request_fields": "limit_request_fields",
    "limit_request_field_size": "limit_request_field_size",
    "forwarded_allow_ips": "forwarded_allow_ips",
    "proxy_protocol": "proxy_protocol",
    "proxy_allow_ips": "proxy_allow_ips",
    "access_log_format": "access_log_format",
}


class _UnixHTTPServer(prefork.UnixStreamServer):
    """``HTTPServer`` semantics on a Unix socket: handlers read ``client_address[0]``."""

    server_name = "localhost"
    server_port = 0

    def get_request(self) -> tuple[Any, Any]:
        connection, _ = self.socket.accept()
        return connection, ("", 0)


def _base_class(kind: AppKind, bind: Bind, sock: socket.socket, app: Any) -> type:
    """The server class for one bind, given what the application is."""
    stream = sock.type == socket.SOCK_STREAM
    unix = sock.family == socket.AF_UNIX
    if kind is AppKind.SERVER:
        return app
    if kind in (AppKind.WSGI, AppKind.HTTP_HANDLER):
        if not stream:
            raise ConfigError(f"bind {bind.text}: an HTTP application needs a stream socket")
        if kind is AppKind.WSGI:
            from prefork.http.wsgi import WSGIServer

            if unix:
                return type("UnixWSGIServer", (_UnixHTTPServer, WSGIServer), {})
            return WSGIServer
        return _UnixHTTPServer if unix else http.server.HTTPServer
    if stream:
        return prefork.UnixStreamServer if unix else prefork.TCPServer
    return prefork.UnixDatagramServer if unix else prefork.UDPServer


class CommandServer(PreforkMixIn):
    """The master side of ``prefork MODULE:OBJECT`` (mixed into each bind's server class).

    Each hook does the command's part, then calls the config file's hook of that
    name (:mod:`prefork.ops.hooks`), then the application's own hook, when the
    application is a server class that defines one (``super()``).
    """

    publish_scoreboard = True
    command: Command

    def post_fork(self, worker: Any) -> None:
        """Import the application in the new worker (unless it was preloaded)."""
        run_hook(self.command.settings, "post_fork", self, worker, fatal=True)
        self.command.install_application(fresh=True)
        run_hook(self.command.settings, "post_worker_init", worker, fatal=True)
        super().post_fork(worker)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An application's exception: into the log (socketserver prints it to stderr)."""
        logger.exception("error handling a request from %s", _peer(client_address))

    def pre_fork(self, worker: Any) -> None:
        run_hook(self.command.settings, "pre_fork", self, worker)
        super().pre_fork(worker)

    def worker_exit(self, worker: Any) -> None:
        run_hook(self.command.settings, "worker_exit", self, worker)
        super().worker_exit(worker)

    def when_ready(self) -> None:
        self.command.when_ready()
        run_hook(self.command.settings, "when_ready", self)
        super().when_ready()

    def workers_ready(self) -> None:
        self.command.workers_ready()
        super().workers_ready()

    def on_reload(self) -> None:
        self.command.reload_settings()
        run_hook(self.command.settings, "on_reload", self)
        super().on_reload()

    def on_shutdown(self) -> None:
        self.command.shutting_down()
        super().on_shutdown()

    def on_upgrade(self, master: Any) -> None:
        # Not super(): the command is what makes USR2 possible (the default ignores it).
        self.command.upgrade(master)

    def master_service_actions(self) -> None:
        self.command.watch_sources()
        super().master_service_actions()


class Command:
    """Everything ``prefork MODULE:OBJECT`` holds while it runs.

    Its size: it is the command's life in order (load the application, open the
    listeners, build the servers, serve, reload settings on ``HUP``, clean up),
    and each step reads the settings and the servers the earlier ones made.
    The steps with state or rules of their own are in their modules: the
    listeners (:mod:`~prefork.ops.binding`), the ``USR2`` upgrade
    (:mod:`~prefork.ops.upgrade`), ``--reload`` (:mod:`~prefork.ops.reloader`),
    the pidfile, privileges, hooks and logging.
    """

    def __init__(
        self,
        app_reference: str,
        settings: dict[str, Any],
        command_line: Mapping[str, Any],
        config_path: str | None,
    ) -> None:
        self.app_reference = app_reference
        self.settings = settings
        self.command_line = dict(command_line)
        self.config_path = config_path
        self.servers: list[Any] = []
        self.pidfile: Pidfile | None = None
        self.kind: AppKind | None = None
        self.app: Any = None
        self.upgrade_in_progress = Upgrade()
        #: Where the command was started (``--chdir`` moves away from it).
        self.launch_dir = os.getcwd()
        self.sources = SourceWatcher()  # the application's own files, for --reload
        self.binding = Binding(settings, self.command_line, config_path)

    # -- building ---------------------------------------------------------------------------

    def load_application(self) -> None:
        """Find out what the application is (importing it here only with ``--preload``)."""
        wsgi = bool(self.settings["wsgi"])
        if self.settings["preload"]:
            self.app = load_object(self.app_reference)
            self.kind = classify(self.app, wsgi=wsgi, reference=self.app_reference)
            self.sources = SourceWatcher(application_sources())
            return
        self.kind, sources = probe(self.app_reference, wsgi=wsgi)
        self.sources = SourceWatcher(sources)
        if self.kind is AppKind.SERVER:
            # A server class binds in the master: it has to be imported there.
            self.app = load_object(self.app_reference)

    def open_listeners(self) -> list[tuple[Bind, socket.socket]]:
        """Bind every ``--bind`` (or adopt inherited and systemd sockets)."""
        return self.binding.open()

    def check_binds(self) -> list[str]:
        """``--check-config``: bind every listener, close it at once, and name them."""
        opened = self.open_listeners()
        names = [listeners.bind_text(sock) for _, sock in opened]
        for _, sock in opened:
            sock.close()
        self.remove_socket_files()
        return names

    def remove_socket_files(self) -> None:
        """Remove the Unix socket files this master's lineage bound, unless a new master
        (``USR2``) has taken them over."""
        if self.upgrade_in_progress.new_master_pid is None:
            self.binding.remove_socket_files()

    def build_servers(self, opened: list[tuple[Bind, socket.socket]]) -> Any:
        """One server per bind; the first runs the engine and serves the others' sockets."""
        assert self.kind is not None
        for bind, sock in opened:
            base = _base_class(self.kind, bind, sock, self.app)
            server = self._make_server(base, sock)
            self.servers.append(server)
        primary = self.servers[0]
        primary.extra_servers = tuple(self.servers[1:])
        if self.app is not None:
            self.install_application(fresh=False)
        return primary

    def _ssl_options(self, sock: socket.socket) -> dict[str, Any] | None:
        """``server_context`` keywords for a TLS stream bind, checked here in the master."""
        settings = self.settings
        if not settings["certfile"] or sock.type != socket.SOCK_STREAM:
            return None
        from prefork.engine.tls import server_context

        options = {
            "certfile": settings["certfile"],
            "keyfile": settings["keyfile"],
            "ca_certs": settings["ca_certs"],
            "cert_reqs": settings["cert_reqs"],
            "ciphers": settings["ciphers"],
        }
        server_context(**options)  # a bad file is a ConfigError now, not in every worker
        return options

    def _make_server(self, base: type, sock: socket.socket) -> Any:
        attributes: dict[str, Any] = {"command": self}
        for setting, attribute in ENGINE_ATTRIBUTES.items():
            attributes[attribute] = self.settings[setting]
        attributes["request_queue_size"] = self.settings["backlog"]
        attributes["ssl_options"] = self._ssl_options(sock)
        cls = type(f"Prefork{base.__name__}", (CommandServer, base), attributes)
        if self.kind is AppKind.SERVER:
            server = self._make_user_server(cls, sock)
        else:
            handler: type = prefork.BaseRequestHandler  # replaced once the application loads
            if self.kind is AppKind.WSGI:
                from prefork.http.wsgi import WSGIRequestHandler

                handler = WSGIRequestHandler
            server = cls(sock.getsockname(), handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.server_address = sock.getsockname()
        if isinstance(server, http.server.HTTPServer) and isinstance(server.server_address, tuple):
            host, port = server.server_address[:2]
            server.server_name = socket.getfqdn(str(host))
            server.server_port = port
        if hasattr(server, "setup_environ") and hasattr(server, "server_name"):
            server.setup_environ()
        return server

    def _make_user_server(self, cls: type, sock: socket.socket) -> Any:
        """Build a user's server class: it brings its own handler (a default or attribute)."""
        handler = getattr(cls, "RequestHandlerClass", None)
        try:
            if handler is not None:
                return cls(sock.getsockname(), handler, bind_and_activate=False)
            return cls(sock.getsockname(), bind_and_activate=False)
        except TypeError as exc:
            raise ConfigError(
                f"cannot build {self.app_reference}({sock.getsockname()!r},"
                f" bind_and_activate=False): {exc}; give the class a default request handler"
                " or a RequestHandlerClass attribute"
            ) from None

    def install_application(self, *, fresh: bool) -> None:
        """Give every server the application (imported anew in a worker when ``fresh``)."""
        if (fresh and self.settings["preload"]) or self.kind is AppKind.SERVER:
            return
        app = load_object(self.app_reference) if fresh else self.app
        if self.kind is not AppKind.WSGI:
            classify(app, wsgi=False, reference=self.app_reference)
        for server in self.servers:
            if self.kind is AppKind.WSGI:
                server.set_app(app)
            else:
                server.RequestHandlerClass = app

    # -- running ----------------------------------------------------------------------------

    def when_ready(self) -> None:
        """The master is about to fork: log where it listens."""
        for server in self.servers:
            logger.info("listening on %s", listeners.describe(server.socket))
        self.sources.snapshot()

    def shutting_down(self) -> None:
        """Tell systemd the service stops, unless a new master has taken over (USR2)."""
        if self.upgrade_in_progress.new_master_pid is None:
            systemd.stopping()

    def workers_ready(self) -> None:
        """Tell systemd (and, after an upgrade, which pid is now the main one)."""
        master = self.servers[0]
        status = f"{master.configured_workers()} workers x {master.threads} threads"
        if os.environ.get(UPGRADED_FROM_ENV):
            systemd.mainpid(os.getpid())
            os.environ.pop(UPGRADED_FROM_ENV, None)
        systemd.ready(status)

    def reload_settings(self) -> None:
        """``HUP``: re-read the config file and apply what can change without a restart."""
        systemd.reloading()
        try:
            fresh, _ = config.load(self.command_line, self.config_path, cwd=Path(self.launch_dir))
        except ConfigError as exc:
            logger.error("reload: keeping the current settings: %s", exc)
            return
        from prefork.ops.settings import BY_NAME

        applied = set()
        for name, value in fresh.items():
            if value == self.settings[name]:
                continue
            if not BY_NAME[name].reloadable:
                logger.warning("reload: %s changed; it takes effect on restart", name)
                continue
            if name == "raw_env":
                apply_environment(value, previous=self.settings[name])
            self.settings[name] = value
            applied.add(name)
            logger.info("reload: %s = %s", name, _shown(value))
        for server in self.servers:
            for setting, attribute in ENGINE_ATTRIBUTES.items():
                setattr(server, attribute, self.settings[setting])
        logging.getLogger().setLevel(self.settings["loglevel"].upper())
        if applied & {"logfile", "logconfig", "accesslog"}:
            self._reconfigure_logging()

    def _reconfigure_logging(self) -> None:
        from prefork.ops.logs import configure_logging

        try:
            configure_logging(
                self.settings["loglevel"],
                self.settings["logfile"],
                self.settings["logconfig"],
                capture_output=self.settings["capture_output"],
                access_logfile=self.settings["accesslog"],
            )
        except ConfigError as exc:
            logger.error("reload: keeping the current log handlers: %s", exc)
        else:
            logger.info("reload: logging set up again")

    def upgrade(self, master: Any) -> None:
        """``USR2``: re-execute the command with the listening sockets inherited."""
        self.upgrade_in_progress.start(
            master,
            self._bind_texts(),
            launch_dir=self.launch_dir,
            pidfile=self.pidfile,
            pre_exec=lambda: run_hook(self.settings, "pre_exec", self.servers[0]),
        )

    def _bind_texts(self) -> list[tuple[str, Any]]:
        texts = list(self.settings["bind"])
        if len(texts) != len(self.servers):  # systemd sockets: name them by address
            texts = [listeners.describe(s.socket) for s in self.servers]
        return list(zip(texts, self.servers, strict=True))

    def watch_sources(self) -> None:
        """``--reload``: send ourselves HUP when a source file of the application changes."""
        if self.settings["reload"] and self.sources.changed(time.monotonic()):
            logger.info("reload: source files changed")
            os.kill(os.getpid(), signal.SIGHUP)

    # -- the whole run ----------------------------------------------------------------------

    def serve(self) -> int:
        """Bind, write the pidfile, drop privileges, serve; the exit status."""
        from prefork.engine import BootError

        opened = self.open_listeners()
        try:
            primary = self.build_servers(opened)
        except BaseException:
            for _, sock in opened:
                sock.close()
            raise
        started = False
        try:
            self._on_starting(primary)
            if self.settings["pidfile"]:
                self.pidfile = Pidfile(self.settings["pidfile"])
                self.pidfile.create(os.getpid())
            self._drop_privileges()
            started = True
            primary.serve_forever()
        except BootError as exc:
            print(f"prefork: {exc}", file=sys.stderr)
            return 3
        finally:
            primary.server_close()
            if started:
                self.remove_socket_files()
            if self.pidfile is not None:
                self.pidfile.unlink()
            if started:
                run_hook(self.settings, "on_exit", primary)
        return 0

    def _on_starting(self, primary: Any) -> None:
        try:
            run_hook(self.settings, "on_starting", primary, fatal=True)
        except Exception as exc:
            logger.exception("the on_starting hook failed")
            raise ConfigError(
                f"the on_starting hook failed: {type(exc).__name__}: {exc}"
            ) from None

    def _drop_privileges(self) -> None:
        from prefork.ops.privileges import (
            chown_unix_socket,
            drop_privileges,
            resolve_gid,
            resolve_uid,
        )

        user, group = self.settings["user"], self.settings["group"]
        if not user and not group:
            return
        uid = resolve_uid(user) if user else None
        gid = resolve_gid(group) if group else None
        for server in self.servers:
            if server.socket.family == socket.AF_UNIX:
                chown_unix_socket(server.socket.getsockname(), uid, gid)
        drop_privileges(uid, gid)


def change_directory(path: str | None) -> None:
    """``--chdir``: work (and import the application) from ``path``."""
    if not path:
        return
    try:
        os.chdir(path)
    except OSError as exc:
        raise ConfigError(f"cannot change to directory {path}: {exc.strerror}") from None


def apply_environment(pairs: list[str], previous: Sequence[str] = ()) -> None:
    """``-e KEY=VALUE``: set each variable; unset those only ``previous`` set."""
    wanted = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        wanted[key] = value
    for pair in previous:
        key = pair.partition("=")[0]
        if key not in wanted:
            os.environ.pop(key, None)
    os.environ.update(wanted)


def _shown(value: Any) -> str:
    """A setting's value in the log: hook functions by name."""
    from prefork.ops.hooks import reference_of

    return reference_of(value) if callable(value) else repr(value)


def _peer(client_address: Any) -> str:
    """A client address for the log: ``host:port``, or the Unix socket's peer."""
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        host = f"[{client_address[0]}]" if ":" in str(client_address[0]) else client_address[0]
        return f"{host}:{client_address[1]}"
    return repr(client_address) if client_address else "a Unix socket client"
