"""systemd integration without libsystemd: socket activation and readiness notification.

Socket activation (``sd_listen_fds(3)``): systemd, or ``systemd-socket-activate``,
starts the service with its listening sockets already open as descriptors 3,
4, ... and describes them in three environment variables::

    LISTEN_PID=<the pid they are meant for>  LISTEN_FDS=<how many>
    LISTEN_FDNAMES=<name>:<name>:...         (optional; FileDescriptorName= in the unit)

Notification (``sd_notify(3)``): a ``Type=notify`` or ``Type=notify-reload``
service tells systemd it is ready, reloading or stopping by sending
newline-separated ``KEY=VALUE`` assignments in one datagram to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from prefork.errors import ConfigError

__all__ = [
    "LISTEN_FDS_START",
    "is_listening",
    "listen_fds",
    "mainpid",
    "notify",
    "ready",
    "reloading",
    "socket_from_fd",
    "status",
    "stopping",
]

logger = logging.getLogger("prefork.systemd")  # public: docs/operations.md, Logging

#: The first inherited descriptor (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3
#: The name of a descriptor the manager did not name.
UNKNOWN_NAME = "unknown"
#: Seconds a notification may wait for room in the manager's receive queue.
NOTIFY_TIMEOUT = 5.0

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


# -- socket activation -------------------------------------------------------------------------


def listen_fds(unset_environment: bool = True) -> list[tuple[int, str]]:
    """The descriptors passed by socket activation, as ``(fd, name)`` pairs in order.

    Empty unless ``LISTEN_PID`` is this process's pid (otherwise the variables
    were meant for an ancestor, and leaked to us through ``fork``).  The descriptors are
    marked close-on-exec; names come from ``LISTEN_FDNAMES``, ``'unknown'`` when
    it is absent or a name is empty.  With ``unset_environment`` the three
    variables are removed whatever the outcome, so children (and a re-exec'd
    master) do not see them.  Malformed values, a name count that does not
    match, or a descriptor that is not open raise :class:`ConfigError`.
    """
    try:
        return _listen_fds()
    finally:
        if unset_environment:
            for name in _LISTEN_VARIABLES:
                os.environ.pop(name, None)


def _listen_fds() -> list[tuple[int, str]]:
    """listen_fds without the environment cleanup."""
    pid_text = os.environ.get("LISTEN_PID")
    if pid_text is None:
        return []
    if _parse_count(pid_text, "LISTEN_PID") != os.getpid():
        return []
    count_text = os.environ.get("LISTEN_FDS")
    if count_text is None:
        return []
    count = _parse_count(count_text, "LISTEN_FDS", allow_zero=True)
    names_text = os.environ.get("LISTEN_FDNAMES")
    if names_text is None:
        names = [UNKNOWN_NAME] * count
    else:
        names = [name or UNKNOWN_NAME for name in names_text.split(":")] if count else []
        if len(names) != count:
            raise ConfigError(
                f"LISTEN_FDNAMES={names_text!r} has {len(names)} names "
                f"for LISTEN_FDS={count} descriptors"
            )
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise ConfigError(
                f"LISTEN_FDS={count}, but descriptor {fd} is unusable: {exc.strerror or exc}"
            ) from None
    return list(zip(fds, names, strict=True))


def _parse_count(text: str, variable: str, allow_zero: bool = False) -> int:
    """A decimal integer (positive, or zero if allowed) from ``variable``, or ConfigError."""
    stripped = text.strip()
    value = int(stripped) if stripped.isdecimal() and stripped.isascii() else -1
    if value < 0 or (value == 0 and not allow_zero) or value > 2**31 - 1 - LISTEN_FDS_START:
        expected = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"invalid {variable}={text!r}: expected {expected} integer")
    return value


def socket_from_fd(fd: int) -> socket.socket:
    """A socket object owning the inherited socket descriptor ``fd``.

    Family, type and protocol are read from the descriptor itself, and closing
    the returned socket closes ``fd``.  Its ``O_NONBLOCK`` flag is left as it
    came (systemd's ``NonBlocking=``): the flag is shared with the manager's
    copy of the socket, which services must not change.  The socket's timeout
    mirrors the flag instead (``0.0`` for non-blocking, ``None`` for blocking),
    whatever ``socket.setdefaulttimeout()`` says.

    A descriptor that is not open or not a socket, or a stream socket that is
    not listening (a connection passed by ``Accept=yes``), raises
    :class:`ConfigError`.
    """
    try:
        blocking = os.get_blocking(fd)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(
            f"inherited descriptor {fd} is not a socket: {exc.strerror or exc}"
        ) from None
    # Python gives the socket the default timeout without looking at the flag (and
    # sets O_NONBLOCK if that default is not None): put both back as they came.
    sock.settimeout(None if blocking else 0.0)
    if sock.type in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET) and not is_listening(sock):
        sock.detach()  # the descriptor stays the caller's, as it was
        raise ConfigError(f"inherited socket {fd} is not listening (Accept=yes is not supported)")
    return sock


def is_listening(sock: socket.socket) -> bool:
    """Whether ``sock`` is a stream socket in the listening state (``SO_ACCEPTCONN``)."""
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


# -- notification ------------------------------------------------------------------------------


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to the service manager.

    Returns ``True`` once the datagram is sent, ``False`` when ``$NOTIFY_SOCKET``
    is unset (not running under a manager that listens) or the message could
    not be delivered.  Never raises for a missing or broken socket: that is
    logged at debug level, since notification is advisory.
    """
    address_text = os.environ.get("NOTIFY_SOCKET")
    if not address_text:
        return False
    address = _notify_address(address_text)
    if address is None:
        logger.debug("NOTIFY_SOCKET=%r: unsupported address; not notifying", address_text)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(NOTIFY_TIMEOUT)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        logger.debug("cannot notify %s: %s", address_text, exc)
        return False
    return True


def _notify_address(text: str) -> bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``: an absolute path or ``@abstract``."""
    if text.startswith("@"):
        return b"\0" + os.fsencode(text[1:])  # Linux abstract namespace
    if text.startswith("/"):
        return os.fsencode(text)
    return None  # relative paths are refused by systemd too; vsock: is not supported


def ready(status: str | None = None) -> bool:
    """Tell the manager the service is up (``READY=1``), again after each reload.

    ``status``, if given, is sent along as ``STATUS=`` (see :func:`status`).
    """
    return notify("READY=1" + _status_line(status))


def reloading(status: str | None = None) -> bool:
    """Tell the manager a reload started (``RELOADING=1`` with ``MONOTONIC_USEC``).

    ``Type=notify-reload`` requires the timestamp, taken from ``CLOCK_MONOTONIC``;
    send :func:`ready` when the reload is done.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}" + _status_line(status))


def stopping(status: str | None = None) -> bool:
    """Tell the manager the service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1" + _status_line(status))


def status(text: str) -> bool:
    """Set the one-line status that ``systemctl status`` shows (``STATUS=...``)."""
    return notify(_status_line(text).lstrip("\n"))


def mainpid(pid: int) -> bool:
    """Tell the manager ``pid`` is now the service's main process (``MAINPID=...``)."""
    return notify(f"MAINPID={pid}")


def _status_line(text: str | None) -> str:
    """``\\nSTATUS=text`` on one line (a newline would start a new assignment), or ``''``."""
    if text is None:
        return ""
    return "\nSTATUS=" + " ".join(text.splitlines())
