"""prefork.ops.privileges: users, groups, umask, and dropping root for good.

Dropping privileges cannot be undone, so it happens in a forked child that
reports its ids back over a pipe and leaves with ``os._exit``.  Those tests
need root (as in CI); the rest run as anyone.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import in_forked_child, short_tmpdir

from prefork.errors import ConfigError
from prefork.ops.privileges import (
    chown_unix_socket,
    drop_privileges,
    parse_umask,
    resolve_gid,
    resolve_uid,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NOBODY = pwd.getpwnam("nobody")


def free_id() -> int:
    """An id that names neither a user nor a group."""
    for candidate in range(54321, 60000):
        try:
            pwd.getpwuid(candidate)
        except KeyError:
            try:
                grp.getgrgid(candidate)
            except KeyError:
                return candidate
    raise AssertionError("no free id")


# -- resolving users and groups --------------------------------------------------------------


def test_resolve_uid() -> None:
    assert resolve_uid("root") == 0
    assert resolve_uid("nobody") == NOBODY.pw_uid
    assert resolve_uid(0) == 0
    assert resolve_uid("65534") == 65534
    assert resolve_uid(" 1000 ") == 1000
    assert resolve_uid(free_id()) == free_id()  # a bare id needs no passwd entry


def test_resolve_gid() -> None:
    assert resolve_gid("root") == 0
    assert resolve_gid(grp.getgrgid(NOBODY.pw_gid).gr_name) == NOBODY.pw_gid
    assert resolve_gid(0) == 0
    assert resolve_gid("65534") == 65534


@pytest.mark.parametrize(
    ("resolve", "value", "message"),
    [
        (resolve_uid, "no-such-user-x", "unknown user 'no-such-user-x'"),
        (resolve_gid, "no-such-group-x", "unknown group 'no-such-group-x'"),
        (resolve_uid, "", "empty user name"),
        (resolve_gid, "  ", "empty group name"),
        (resolve_uid, -1, "invalid user id -1"),
        (resolve_gid, "-1", "unknown group '-1'"),
        (resolve_uid, 2**32 - 1, "invalid user id 4294967295"),
        (resolve_uid, True, "invalid user True"),
        (resolve_gid, 1.5, "invalid group 1.5"),
    ],
)
def test_resolve_rejects(resolve: Callable[[Any], int], value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(value)
    assert str(caught.value) == message


# -- umask ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0o22", 0o22),
        ("0O027", 0o27),
        ("022", 0o22),
        ("0022", 0o22),
        ("18", 18),
        (18, 18),
        ("0", 0),
        (0, 0),
        ("0777", 0o777),
        (" 077 ", 0o77),
        ("0x12", 18),
        (0o777, 0o777),
    ],
)
def test_parse_umask(value: str | int, expected: int) -> None:
    assert parse_umask(value) == expected


@pytest.mark.parametrize(
    "value", ["", "abc", "08", "0o8", "0o1000", "1000", "-1", -1, 512, True, 1.5, None]
)
def test_parse_umask_rejects(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^invalid umask "):
        parse_umask(value)


# -- dropping privileges -----------------------------------------------------------------------


def in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` in a forked child; return its result, or ``{"error": ...}`` if it raised."""

    def report() -> str:
        try:
            return json.dumps(body())
        except BaseException as exc:
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    result: dict[str, Any] = json.loads(in_forked_child(report))
    return result


def identity() -> dict[str, Any]:
    """This process's ids, and whether it can become root again."""
    try:
        os.setuid(0)
        regained = True
    except PermissionError:
        regained = False
    return {
        "uids": list(os.getresuid()),
        "gids": list(os.getresgid()),
        "groups": sorted(os.getgroups()),
        "regained_root": regained,
    }


def dropping(uid: int | None, gid: int | None) -> Callable[[], dict[str, Any]]:
    """A child body: drop to ``uid``/``gid``, then report the identity."""

    def body() -> dict[str, Any]:
        drop_privileges(uid, gid)
        return identity()

    return body


@needs_root
def test_drop_to_nobody() -> None:
    """Without a group, the user's primary group; supplementary groups from the group db."""
    report = in_child(dropping(resolve_uid("nobody"), None))
    gid = NOBODY.pw_gid
    assert report == {
        "uids": [NOBODY.pw_uid] * 3,
        "gids": [gid] * 3,
        "groups": sorted(set(os.getgrouplist("nobody", gid))),
        "regained_root": False,
    }


@needs_root
def test_drop_to_nobody_with_a_group() -> None:
    gid = free_id()
    report = in_child(dropping(NOBODY.pw_uid, gid))
    assert report["uids"] == [NOBODY.pw_uid] * 3
    assert report["gids"] == [gid] * 3
    assert report["groups"] == sorted(set(os.getgrouplist("nobody", gid)))
    assert gid in report["groups"]
    assert 0 not in report["groups"]
    assert report["regained_root"] is False


@needs_root
def test_drop_to_an_unnamed_uid_and_gid() -> None:
    """No passwd entry, so no initgroups: the supplementary groups are just the gid."""
    unnamed = free_id()
    report = in_child(dropping(unnamed, unnamed))
    assert report == {
        "uids": [unnamed] * 3,
        "gids": [unnamed] * 3,
        "groups": [unnamed],
        "regained_root": False,
    }


@needs_root
def test_drop_group_only() -> None:
    report = in_child(dropping(None, NOBODY.pw_gid))
    assert report["uids"] == [0, 0, 0]
    assert report["gids"] == [NOBODY.pw_gid] * 3
    assert report["groups"] == [NOBODY.pw_gid]


def test_drop_to_an_unnamed_uid_needs_a_group() -> None:
    """Refused before anything changes, so it is safe to try in this process."""
    unnamed = free_id()
    before = identity_without_setuid()
    with pytest.raises(ConfigError) as caught:
        drop_privileges(unnamed, None)
    assert str(caught.value) == f"uid {unnamed} has no passwd entry: set a group as well"
    assert identity_without_setuid() == before


def identity_without_setuid() -> tuple[Any, ...]:
    """This process's ids, without probing (probing could change them)."""
    return os.getresuid(), os.getresgid(), sorted(os.getgroups())


def test_drop_nothing_is_a_no_op() -> None:
    before = identity_without_setuid()
    drop_privileges(None, None)
    assert identity_without_setuid() == before


@needs_root
def test_not_root_cannot_switch() -> None:
    """Once unprivileged, asking for other ids is a ConfigError; asking for our own is fine."""

    def body() -> dict[str, Any]:
        drop_privileges(NOBODY.pw_uid, NOBODY.pw_gid)
        drop_privileges(NOBODY.pw_uid, NOBODY.pw_gid)  # the same again: nothing to do
        outcomes = {}
        for uid, gid in [(0, None), (None, 0), (0, 0)]:
            try:
                drop_privileges(uid, gid)
                outcomes[f"{uid}/{gid}"] = "switched"
            except ConfigError as exc:
                outcomes[f"{uid}/{gid}"] = str(exc)
        return outcomes | {"uid": os.getuid()}

    assert in_child(body) == {
        # Without a group, a user's primary group is implied (root's: 0).
        "0/None": "cannot switch to uid 0 and gid 0: not running as root",
        "None/0": "cannot switch to gid 0: not running as root",
        "0/0": "cannot switch to uid 0 and gid 0: not running as root",
        "uid": NOBODY.pw_uid,
    }


# -- unix socket ownership ---------------------------------------------------------------------


def bound_unix_socket(path: str) -> socket.socket:
    """A Unix stream socket bound at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    return sock


def test_chown_unix_socket_mode() -> None:
    with short_tmpdir() as directory:
        path = os.path.join(directory, "app.sock")
        with bound_unix_socket(path):
            chown_unix_socket(path, mode=0o660)
            info = os.lstat(path)
            assert stat.S_IMODE(info.st_mode) == 0o660
            chown_unix_socket(path, os.getuid(), os.getgid())  # our own: allowed to anyone
            assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (os.getuid(), os.getgid())


@needs_root
def test_chown_unix_socket_owner() -> None:
    with short_tmpdir() as directory:
        path = os.path.join(directory, "app.sock")
        with bound_unix_socket(path):
            chown_unix_socket(path, NOBODY.pw_uid, None, 0o600)
            info = os.lstat(path)
            assert (info.st_uid, info.st_gid) == (NOBODY.pw_uid, os.getgid())
            assert stat.S_IMODE(info.st_mode) == 0o600
            chown_unix_socket(path, None, NOBODY.pw_gid)
            info = os.lstat(path)
            assert (info.st_uid, info.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
            assert stat.S_IMODE(info.st_mode) == 0o600


def test_chown_unix_socket_refuses_other_files(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    victim.chmod(0o600)
    link = tmp_path / "link.sock"
    link.symlink_to(victim)
    for path in (victim, link):
        with pytest.raises(ConfigError) as caught:
            chown_unix_socket(path, mode=0o666)
        assert str(caught.value) == f"cannot change unix socket {path}: not a socket"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    missing = tmp_path / "missing.sock"
    with pytest.raises(ConfigError) as caught:
        chown_unix_socket(missing, mode=0o666)
    assert str(caught.value) == f"cannot change unix socket {missing}: No such file or directory"
