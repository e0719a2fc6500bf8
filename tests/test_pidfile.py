"""prefork.ops.pidfile: atomic writes, stale files replaced, live masters respected.

"Other masters" are real processes: a child Python that gives itself the
master's title (or not), then blocks reading its stdin until the test closes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import TIMEOUT, short_tmpdir
from support import in_forked_child as in_child

from prefork.errors import ConfigError
from prefork.ops import pidfile
from prefork.ops.pidfile import Pidfile

#: A process that sets its title to argv[1] (unless empty), says so, and waits for EOF.
HOLDER = """
import sys
if sys.argv[1]:
    import setproctitle
    setproctitle.setproctitle(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def live_process(title: str = "") -> Iterator[subprocess.Popen[str]]:
    """A running child (titled ``title``), ended and reaped on exit."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, title],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline() == "ready\n"
            yield proc
        finally:
            proc.communicate(timeout=TIMEOUT)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait(TIMEOUT)
    return proc.pid


def write(path: Path, content: str, age: float | None = None) -> None:
    """Write a pidfile by hand; with ``age``, date its mtime that many seconds back."""
    path.write_text(content)
    if age is not None:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the pidfile under test goes."""
    return tmp_path / "app.pid"


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The warnings prefork.ops.pidfile has logged so far."""
    caplog.set_level(logging.WARNING, logger="prefork.pidfile")

    def messages() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "prefork.pidfile" and r.levelno == logging.WARNING
        ]

    return messages


# -- read ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("1234\n", 1234),
        ("  77  \n", 77),
        ("", None),
        ("\n", None),
        ("garbage", None),
        ("12ab", None),
        ("-5", None),
        ("0", None),
        ("99999999999999999999", None),
        ("1.5", None),
    ],
)
def test_read(path: Path, content: str, expected: int | None) -> None:
    path.write_text(content)
    assert pidfile.read(path) == expected


def test_read_missing(path: Path) -> None:
    assert pidfile.read(path) is None


def test_read_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        pidfile.read(tmp_path)
    assert str(caught.value) == f"cannot read pidfile {tmp_path}: Is a directory"


# -- create ----------------------------------------------------------------------------------


def test_create_writes_pid_atomically_with_mode_0644(path: Path) -> None:
    previous = os.umask(0o077)  # a strict umask must not make the file private
    try:
        Pidfile(path).create(os.getpid())
    finally:
        os.umask(previous)
    assert path.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["app.pid"]  # no temporary file left


def test_create_makes_a_relative_path_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    file = Pidfile("app.pid")
    assert file.path == str(tmp_path / "app.pid")
    file.create(os.getpid())
    monkeypatch.chdir("/")
    assert file.unlink() is True
    assert os.listdir(tmp_path) == []


def test_create_refuses_a_bad_pid(path: Path) -> None:
    with pytest.raises(ValueError, match="not a pid"):
        Pidfile(path).create(0)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param("", "it holds no pid", id="empty"),
        pytest.param("not a pid\n", "it holds no pid", id="garbage"),
        pytest.param("{dead}\n", "(pid {dead} is not a running master)", id="dead"),
        pytest.param("{own}\n", "it names this process ({own})", id="own-pid"),
    ],
)
def test_create_replaces_a_stale_file(
    path: Path, warnings_logged: Callable[[], list[str]], content: str, reason: str
) -> None:
    values = {"dead": dead_pid(), "own": os.getpid()}
    write(path, content.format(**values))
    Pidfile(path).create(os.getpid())
    assert pidfile.read(path) == os.getpid()
    [message] = warnings_logged()
    assert str(path) in message
    assert message.endswith(reason.format(**values))
    assert os.listdir(path.parent) == ["app.pid"]


def test_create_replaces_a_zombie(path: Path, warnings_logged: Callable[[], list[str]]) -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        # Wait until it has exited without reaping it: a zombie.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        write(path, f"{proc.pid}\n")
        Pidfile(path).create(os.getpid())
    assert pidfile.read(path) == os.getpid()
    assert warnings_logged() == [
        f"replacing stale pidfile {path} (pid {proc.pid} is not a running master)"
    ]


def test_create_refuses_a_running_master(path: Path) -> None:
    """A titled master is respected even if the file looks older than the process."""
    with live_process("prefork: master [app]") as master:
        write(path, f"{master.pid}\n", age=3600)
        with pytest.raises(ConfigError) as caught:
            Pidfile(path).create(os.getpid())
        assert str(caught.value) == (
            f"pidfile {path} is held by a running master (pid {master.pid})"
        )
        assert pidfile.read(path) == master.pid
        assert os.listdir(path.parent) == ["app.pid"]


def test_create_refuses_an_untitled_process_older_than_the_file(path: Path) -> None:
    """A live process that started before the file was written may be its master."""
    with live_process() as holder:
        write(path, f"{holder.pid}\n")
        with pytest.raises(ConfigError, match=f"held by a running master \\(pid {holder.pid}\\)"):
            Pidfile(path).create(os.getpid())
        assert pidfile.read(path) == holder.pid


def test_create_replaces_a_reused_pid(
    path: Path, warnings_logged: Callable[[], list[str]]
) -> None:
    """An untitled process started after the file was written took over a dead master's pid."""
    with live_process() as stranger:
        write(path, f"{stranger.pid}\n", age=3600)
        Pidfile(path).create(os.getpid())
        assert pidfile.read(path) == os.getpid()
    assert warnings_logged() == [
        f"replacing stale pidfile {path} (pid {stranger.pid} is not a running master)"
    ]


@pytest.mark.parametrize(
    ("make_path", "reason"),
    [
        pytest.param(lambda d: d / "missing" / "app.pid", "No such file or directory", id="none"),
        pytest.param(lambda d: d / "file" / "app.pid", "Not a directory", id="file"),
    ],
)
def test_create_in_a_bad_directory(
    tmp_path: Path, make_path: Callable[[Path], Path], reason: str
) -> None:
    (tmp_path / "file").write_text("")
    target = make_path(tmp_path)
    with pytest.raises(ConfigError) as caught:
        Pidfile(target).create(os.getpid())
    assert str(caught.value) == f"cannot write pidfile {target}: {reason}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_create_in_an_unwritable_directory() -> None:
    """Root writes anywhere, so an unprivileged child tries (the directory is 0700 root's)."""
    nobody = pwd.getpwnam("nobody")
    with short_tmpdir() as directory:
        target = os.path.join(directory, "app.pid")

        def body() -> str:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            Pidfile(target).create(os.getpid())
            return "created"

        assert in_child(body) == (f"ConfigError: cannot write pidfile {target}: Permission denied")
        assert os.listdir(directory) == []


# -- unlink and rename -----------------------------------------------------------------------


def test_unlink_removes_our_file(path: Path) -> None:
    file = Pidfile(path)
    file.create(os.getpid())
    assert file.unlink() is True
    assert not path.exists()
    assert file.unlink() is False  # already gone: no error


def test_unlink_keeps_a_file_a_new_master_wrote(path: Path) -> None:
    file = Pidfile(path)
    file.create(os.getpid())
    write(path, "4242\n")
    assert file.unlink() is False
    assert path.read_text() == "4242\n"


def test_unlink_before_create_does_nothing(path: Path) -> None:
    write(path, f"{os.getpid()}\n")
    assert Pidfile(path).unlink() is False
    assert path.exists()


def test_rename_for_an_upgrade_and_back(path: Path) -> None:
    """The old master moves to PIDFILE.oldbin; if the new one fails, it moves back."""
    file = Pidfile(path)
    file.create(os.getpid())
    oldbin = path.with_name("app.pid.oldbin")
    file.rename(oldbin)
    assert file.path == str(oldbin)
    assert not path.exists()
    assert pidfile.read(oldbin) == os.getpid()

    file.rename(path)
    assert file.path == str(path)
    assert pidfile.read(path) == os.getpid()
    assert sorted(os.listdir(path.parent)) == ["app.pid"]
    assert file.unlink() is True


def test_rename_leaves_a_new_masters_file_alone(path: Path) -> None:
    file = Pidfile(path)
    file.create(os.getpid())
    write(path, "4242\n")  # a new master has taken the name
    oldbin = path.with_name("app.pid.oldbin")
    file.rename(oldbin)
    assert path.read_text() == "4242\n"
    assert pidfile.read(oldbin) == os.getpid()
    assert stat.S_IMODE(oldbin.stat().st_mode) == 0o644
    assert sorted(os.listdir(path.parent)) == ["app.pid", "app.pid.oldbin"]


def test_rename_into_a_bad_directory(path: Path) -> None:
    file = Pidfile(path)
    file.create(os.getpid())
    target = path.parent / "missing" / "app.pid.oldbin"
    with pytest.raises(ConfigError) as caught:
        file.rename(target)
    assert str(caught.value) == (
        f"cannot move pidfile {path} to {target}: No such file or directory"
    )
    assert file.path == str(path)
    assert pidfile.read(path) == os.getpid()


def test_rename_before_create(path: Path) -> None:
    with pytest.raises(RuntimeError):
        Pidfile(path).rename(str(path) + ".oldbin")
