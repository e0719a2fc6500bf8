"""Listening sockets: parsing bind specs, creating sockets, adopting inherited ones.

A bind spec is one of ``HOST:PORT``, ``[IPV6]:PORT``, ``tcp://HOST:PORT``,
``udp://HOST:PORT``, ``unix:PATH``, ``unix-dgram:PATH``, ``fd://N`` or
``fd://NAME`` (a socket systemd passed with that ``FileDescriptorName``).

Sockets are created by the master before it forks, stay open across a reload,
and are inherited by a re-executed master on a zero-downtime upgrade (the
environment variable :data:`INHERIT_ENV` maps bind specs to fds).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from prefork.errors import ConfigError

#: Environment variable naming the listening fds a re-executed master inherits.
INHERIT_ENV = "PREFORK_INHERITED_FDS"

logger = logging.getLogger("prefork.listeners")  # public: docs/operations.md, Logging


class Kind(str, enum.Enum):
    """What a bind listens on."""

    TCP = "tcp"
    UDP = "udp"
    UNIX = "unix"
    UNIX_DGRAM = "unix-dgram"
    FD = "fd"


@dataclass(frozen=True)
class Bind:
    """A parsed bind spec."""

    text: str
    kind: Kind
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1
    fd_name: str = ""


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)$")


def parse_bind(text: str) -> Bind:
    """Parse a bind spec; raises :class:`ConfigError` naming the bad one."""
    spec = text.strip()
    for prefix, kind in (
        ("unix-dgram://", Kind.UNIX_DGRAM),
        ("unix-dgram:", Kind.UNIX_DGRAM),
        ("unix://", Kind.UNIX),
        ("unix:", Kind.UNIX),
    ):
        if spec.startswith(prefix):
            path = spec[len(prefix) :]
            if not path:
                raise ConfigError(f"bad bind {text!r}: no socket path")
            return Bind(text, kind, path=path)
    if spec.startswith("fd://"):
        ref = spec[len("fd://") :]
        if ref.isdigit():
            return Bind(text, Kind.FD, fd=int(ref))
        if re.fullmatch(r"[A-Za-z0-9_.:-]+", ref):
            return Bind(text, Kind.FD, fd_name=ref)
        raise ConfigError(f"bad bind {text!r}: expected fd://NUMBER or fd://NAME")
    kind = Kind.TCP
    for prefix, scheme_kind in (("tcp://", Kind.TCP), ("udp://", Kind.UDP)):
        if spec.startswith(prefix):
            spec, kind = spec[len(prefix) :], scheme_kind
            break
    match = _HOST_PORT.match(spec)
    if not match or "://" in spec:
        raise ConfigError(
            f"bad bind {text!r}: expected HOST:PORT, [IPV6]:PORT, tcp://, udp://, unix:PATH,"
            " unix-dgram:PATH or fd://N"
        )
    port = int(match["port"])
    if port > 65535:
        raise ConfigError(f"bad bind {text!r}: port {port} is out of range")
    host = match["v6"] if match["v6"] is not None else (match["host"] or "0.0.0.0")
    return Bind(text, kind, host=host, port=port)


def open_listener(
    bind: Bind,
    *,
    backlog: int,
    reuse_port: bool = False,
    unix_mode: int | None = None,
    inherited: Mapping[str, int] | None = None,
    systemd_fds: list[tuple[int, str]] | None = None,
) -> socket.socket:
    """The listening socket for ``bind``: inherited, passed by systemd, or newly bound."""
    fd = _find_passed_fd(bind, inherited or {}, systemd_fds or [])
    if fd is not None:
        return adopt_fd(fd, bind.text)
    if bind.kind is Kind.FD:
        raise ConfigError(f"bind {bind.text!r}: no such socket was passed to prefork")
    try:
        if bind.kind in (Kind.UNIX, Kind.UNIX_DGRAM):
            return _bind_unix(bind, backlog, unix_mode)
        return _bind_inet(bind, backlog, reuse_port)
    except OSError as exc:
        raise ConfigError(f"cannot bind {bind.text}: {exc.strerror or exc}") from None


def owned_unix_path(bind: Bind, systemd_fds: list[tuple[int, str]]) -> str | None:
    """The socket file prefork binds (or a previous prefork master bound) for ``bind``.

    ``None`` for a non-Unix bind and for a socket someone else passed
    (``fd://``, systemd): its file is theirs to remove.
    """
    if bind.kind not in (Kind.UNIX, Kind.UNIX_DGRAM):
        return None
    if _find_passed_fd(bind, {}, systemd_fds) is not None:
        return None
    return bind.path


def _find_passed_fd(
    bind: Bind, inherited: Mapping[str, int], systemd_fds: list[tuple[int, str]]
) -> int | None:
    if bind.text in inherited:
        return inherited[bind.text]
    if bind.kind is Kind.FD:
        if bind.fd >= 0:
            return bind.fd
        for fd, name in systemd_fds:
            if name == bind.fd_name:
                return fd
        return None
    for fd, _ in systemd_fds:
        with contextlib.suppress(OSError):
            probe = socket.socket(fileno=os.dup(fd))
            with probe:
                if _same_address(bind, probe):
                    return fd
    return None


def _same_address(bind: Bind, sock: socket.socket) -> bool:
    name = sock.getsockname()
    if bind.kind in (Kind.UNIX, Kind.UNIX_DGRAM):
        return sock.family == socket.AF_UNIX and name == bind.path
    wanted_type = socket.SOCK_STREAM if bind.kind is Kind.TCP else socket.SOCK_DGRAM
    if sock.type != wanted_type or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        infos = socket.getaddrinfo(bind.host, bind.port, type=wanted_type)
    except OSError:
        return False
    return any(info[4][:2] == name[:2] for info in infos)


def adopt_fd(fd: int, label: str) -> socket.socket:
    """A socket object for an inherited fd (its family and type are detected)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConfigError(f"bind {label!r}: fd {fd} is not a socket")
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"bind {label!r}: fd {fd}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def _bind_inet(bind: Bind, backlog: int, reuse_port: bool) -> socket.socket:
    sock_type = socket.SOCK_STREAM if bind.kind is Kind.TCP else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(bind.host, bind.port, type=sock_type, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot bind {bind.text}: {exc.strerror}") from None
    family, _, proto, _, address = infos[0]
    if reuse_port and bind.port:
        _warn_if_shared(bind, family, sock_type, address)
    sock = socket.socket(family, sock_type, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if sock_type == socket.SOCK_STREAM:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _warn_if_shared(bind: Bind, family: int, sock_type: int, address: tuple) -> None:
    """Warn when ``--reuse-port`` would quietly share the port with another process.

    With ``SO_REUSEPORT`` the kernel lets a second process bind a port that
    another one (of the same user) listens on, and splits the connections
    between them: an old server left running takes part of the traffic.  A
    trial bind without the option fails exactly when someone holds the port.
    For TCP the trial sets ``SO_REUSEADDR``, so that connections in TIME_WAIT
    do not count; for UDP it must not, as UDP sockets share with it.
    """
    probe = socket.socket(family, sock_type)
    try:
        if sock_type == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            logger.warning(
                "bind %s: another process%s already listens on this address; with"
                " --reuse-port the kernel will share the connections with it",
                bind.text,
                _holder(bind.port, sock_type),
            )
    finally:
        probe.close()


def _holder(port: int, sock_type: int) -> str:
    """`` (pid N)`` of the process bound to ``port``, when it can be seen."""
    import psutil

    kind = "tcp" if sock_type == socket.SOCK_STREAM else "udp"
    try:
        connections = psutil.net_connections(kind)
    except (psutil.Error, OSError):
        return ""
    pids = sorted(
        {
            c.pid
            for c in connections
            if c.pid
            and c.laddr
            and c.laddr.port == port
            and c.pid != os.getpid()
            and (kind == "udp" or c.status == psutil.CONN_LISTEN)
        }
    )
    return f" (pid {', '.join(map(str, pids))})" if pids else ""


def _bind_unix(bind: Bind, backlog: int, mode: int | None) -> socket.socket:
    sock_type = socket.SOCK_STREAM if bind.kind is Kind.UNIX else socket.SOCK_DGRAM
    remove_stale_unix_socket(bind.path, sock_type)
    sock = socket.socket(socket.AF_UNIX, sock_type)
    try:
        sock.bind(bind.path)
        if mode is not None:
            os.chmod(bind.path, mode)
        if sock_type == socket.SOCK_STREAM:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def remove_stale_unix_socket(path: str, sock_type: int) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse if someone does."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot bind unix:{path}: the file exists and is not a socket")
    with socket.socket(socket.AF_UNIX, sock_type) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale: left by a process that is gone
            return
        except OSError as exc:
            if exc.errno in (errno.ENOENT,):
                return
            raise ConfigError(f"cannot bind unix:{path}: {exc.strerror}") from None
    raise ConfigError(f"cannot bind unix:{path}: Address already in use")


def inherited_fds(environ: Mapping[str, str]) -> dict[str, int]:
    """The ``{bind spec: fd}`` a re-executed master inherited (empty when none)."""
    raw = environ.get(INHERIT_ENV)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
        return {str(key): int(fd) for key, fd in value.items()}
    except (ValueError, AttributeError, TypeError):
        raise ConfigError(f"{INHERIT_ENV}: malformed value {raw!r}") from None


def describe(sock: socket.socket) -> str:
    """A bind-spec-like text for a bound socket (for logs)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        prefix = "unix" if sock.type == socket.SOCK_STREAM else "unix-dgram"
        return f"{prefix}:{name}"
    scheme = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return f"{scheme}://{host}:{name[1]}"


def bind_text(sock: socket.socket) -> str:
    """A bound socket in ``--bind`` syntax: ``127.0.0.1:8000``, ``[::1]:8000``, ``unix:PATH``."""
    text = describe(sock)
    return text.removeprefix("tcp://")


def listen_backlog(cls: type) -> int:
    """``request_queue_size``, unless the value is the standard library's default of 5.

    A backlog of 5 drops the SYNs of a burst and makes clients retry a second
    later; the engine listens with ``SOMAXCONN`` unless a class chose a value.
    """
    import socketserver as stdlib_socketserver

    for klass in cls.__mro__:
        if "request_queue_size" in vars(klass):
            chosen = vars(klass)["request_queue_size"]
            if klass is stdlib_socketserver.TCPServer and chosen == 5:
                return socket.SOMAXCONN
            return int(chosen)
    return socket.SOMAXCONN
