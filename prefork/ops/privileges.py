"""Users, groups, umask: resolving them from settings and dropping root for good.

A master started as root binds its sockets (ports below 1024, sockets in
``/run``) and then gives up root with :func:`drop_privileges`: supplementary
groups first, then the group, then the user, since once the user is gone the
process may no longer change its groups.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from collections.abc import Callable

from prefork.errors import ConfigError

__all__ = [
    "chown_unix_socket",
    "drop_privileges",
    "parse_umask",
    "resolve_gid",
    "resolve_uid",
]


def resolve_uid(user: str | int) -> int:
    """The uid of ``user``: a user name, or a uid as a number or a string of digits.

    A numeric uid needs no ``/etc/passwd`` entry (containers often run as bare
    ids); a name must exist, else :class:`ConfigError` (``unknown user 'x'``).
    """
    return _resolve(user, "user", lambda name: pwd.getpwnam(name).pw_uid)


def resolve_gid(group: str | int) -> int:
    """The gid of ``group``: a group name, or a gid as a number or a string of digits.

    An unknown name raises :class:`ConfigError` (``unknown group 'x'``).
    """
    return _resolve(group, "group", lambda name: grp.getgrnam(name).gr_gid)


def _resolve(value: str | int, kind: str, lookup: Callable[[str], int]) -> int:
    """Shared body of resolve_uid and resolve_gid."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"invalid {kind} {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ConfigError(f"empty {kind} name")
        if not text.isdecimal():
            try:
                return lookup(text)
            except KeyError:
                raise ConfigError(f"unknown {kind} {text!r}") from None
        value = int(text)
    if not 0 <= value < 2**32 - 1:  # (uid_t) -1 means "unchanged" to the kernel
        raise ConfigError(f"invalid {kind} id {value}")
    return value


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """Switch this process to ``uid`` and ``gid`` for good (``None``: keep the current one).

    As root: the supplementary groups become the user's (``initgroups`` when the
    uid has a passwd entry, else just ``gid``), then ``setgid``, then
    ``setuid``; real, effective and saved ids all change, and the result is
    verified, including that root cannot be regained.  Without ``gid``, a user
    with a passwd entry gets their primary group; one without an entry is a
    :class:`ConfigError` (keeping root's group would be a hole).

    Not as root: asking for the current ids is a no-op, anything else a
    :class:`ConfigError`.
    """
    entry = _passwd_entry(uid) if uid is not None else None
    if gid is None and uid is not None and uid != os.getuid():
        if entry is None:
            raise ConfigError(f"uid {uid} has no passwd entry: set a group as well")
        gid = entry.pw_gid
    if os.geteuid() != 0:
        wanted = []
        if uid is not None and uid != os.getuid():
            wanted.append(f"uid {uid}")
        if gid is not None and gid != os.getgid():
            wanted.append(f"gid {gid}")
        if wanted:
            raise ConfigError(f"cannot switch to {' and '.join(wanted)}: not running as root")
        return
    if uid is None and gid is None:
        return
    try:
        if gid is not None:
            if entry is not None:
                os.initgroups(entry.pw_name, gid)
            else:
                os.setgroups([gid])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
    except OSError as exc:
        raise ConfigError(f"cannot drop privileges: {exc.strerror or exc}") from None
    _verify(uid, gid)


def _passwd_entry(uid: int) -> pwd.struct_passwd | None:
    """The passwd entry of ``uid``, or ``None`` when it has none."""
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def _verify(uid: int | None, gid: int | None) -> None:
    """Raise ConfigError unless the switch to ``uid``/``gid`` is complete and irreversible."""
    if gid is not None and os.getresgid() != (gid, gid, gid):
        raise ConfigError(f"cannot drop privileges: group ids are {os.getresgid()}, not {gid}")
    if uid is None:
        return
    if os.getresuid() != (uid, uid, uid):
        raise ConfigError(f"cannot drop privileges: user ids are {os.getresuid()}, not {uid}")
    if uid != 0:
        with contextlib.suppress(PermissionError):
            os.setuid(0)
            raise ConfigError(f"cannot drop privileges: uid {uid} could regain root")


def parse_umask(value: str | int) -> int:
    """A umask from a setting: ``18``, ``'18'`` (decimal), ``'022'`` (octal), ``'0o22'``.

    A string with a leading zero is octal, as in ``umask(1)``; ``0o``, ``0x`` and
    ``0b`` prefixes are understood.  Anything outside ``0..0o777`` is a
    :class:`ConfigError`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"invalid umask {value!r}")
    if isinstance(value, int):
        mask = value
    else:
        text = value.strip().replace("_", "")
        try:
            if len(text) > 1 and text[0] == "0" and text[1].isdigit():
                mask = int(text, 8)
            else:
                mask = int(text, 0)
        except ValueError:
            raise ConfigError(f"invalid umask {value!r}") from None
    if not 0 <= mask <= 0o777:
        raise ConfigError(f"invalid umask {value!r}: must be between 0 and 0o777")
    return mask


def chown_unix_socket(
    path: str | os.PathLike[str],
    uid: int | None = None,
    gid: int | None = None,
    mode: int | None = None,
) -> None:
    """Give the Unix socket file at ``path`` an owner, group and permission bits.

    ``None`` leaves that attribute alone.  The file must be a socket, not a
    symlink to something else: the change is made through a descriptor opened
    without following links, so a root master cannot be tricked into changing
    another file.  Failures are a :class:`ConfigError` naming the OS's reason.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot change unix socket {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConfigError(f"cannot change unix socket {path}: not a socket")
        # An O_PATH descriptor refuses fchown/fchmod; its /proc link names the same inode.
        target = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else path
        if uid is not None or gid is not None:
            os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None:
            os.chmod(target, mode)
    except OSError as exc:
        raise ConfigError(f"cannot change unix socket {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
