"""The master's pidfile: written atomically, never clobbering a live master, removed only if ours.

When is an existing pidfile *held*?  The pid it names must be a live process
(not a zombie) other than the caller, and that process must be one that could
have written the file: either its title says ``prefork: master``, or it was
started before the file was last written.  Everything else is *stale* and is
replaced with a warning: a dead pid, a zombie, our own pid (a container that
restarted with the same pid), an empty file, garbage.

Neither test alone is enough.  Trusting "the pid is alive" refuses to start
after a reboot whenever an unrelated process happens to get the old pid.
Trusting only the title would clobber the pidfile of a master that has not set
its title (yet, or at all: without the main thread it never does).  The start
time check catches pid reuse (the new owner of the pid started after the file
was written); the title check keeps a master safe when the wall clock jumped
forward after it wrote the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile

import psutil

from prefork.errors import ConfigError

__all__ = ["Pidfile", "read"]

logger = logging.getLogger("prefork.pidfile")  # public: docs/operations.md, Logging

#: The title a master gives itself (``prefork: master [name]``).
MASTER_TITLE = "prefork: master"
#: Seconds of slack when comparing a process's start time with the file's mtime:
#: psutil derives start times from the boot time, which Linux reports in whole seconds.
_START_TIME_SLACK = 2.0
#: The largest pid Linux can hand out (PID_MAX_LIMIT); a larger number is garbage.
_PID_MAX = 1 << 22
#: Errors of os.link that mean "this filesystem has no hard links", not "no access".
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def read(path: str | os.PathLike[str]) -> int | None:
    """The pid in the pidfile at ``path``, or ``None`` if it is missing, empty or not a pid.

    Raises :class:`ConfigError` if the file exists but cannot be read.
    """
    try:
        with open(path, "rb") as file:
            content = file.read(64)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read pidfile {path}: {_reason(exc)}") from None
    text = content.strip()
    if not text.isdigit():  # empty, garbage, a sign, a partial write
        return None
    pid = int(text)
    return pid if 0 < pid <= _PID_MAX else None


class Pidfile:
    """The pidfile at ``path`` (made absolute, so a later ``chdir`` does not move it).

    ``create(pid)`` writes it; ``unlink()`` removes it at exit, unless another
    master has replaced it since; ``rename(new_path)`` moves it, as the old master
    of a zero-downtime upgrade does to ``PIDFILE.oldbin``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        #: The pid this object wrote, once ``create()`` has run.
        self.pid: int | None = None

    def __repr__(self) -> str:
        return f"Pidfile({self.path!r}, pid={self.pid})"

    def create(self, pid: int) -> None:
        """Write ``pid`` to the file atomically, mode 0644.

        A file already there is replaced if stale (with a warning); if it is held
        by a running master, :class:`ConfigError` is raised and nothing changes.
        An unwritable directory raises :class:`ConfigError` with the OS's reason.
        """
        if pid <= 0:
            raise ValueError(f"not a pid: {pid}")
        temp = self._write_temp(pid)
        try:
            if not self._link_if_absent(temp):
                self._check_stale(pid)
                os.replace(temp, self.path)
        except OSError as exc:
            raise ConfigError(f"cannot write pidfile {self.path}: {_reason(exc)}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        self.pid = pid

    def rename(self, new_path: str | os.PathLike[str]) -> None:
        """Move the pidfile to ``new_path`` (replacing any file there) and follow it.

        If the file no longer names this master (it was removed, or a new master
        took it over), it is left alone and a fresh one is written at
        ``new_path``: either way ``new_path`` ends up naming this master.
        """
        if self.pid is None:
            raise RuntimeError("rename() before create()")
        new_path = os.path.abspath(os.fspath(new_path))
        try:
            if read(self.path) == self.pid:
                os.replace(self.path, new_path)
            else:
                temp = self._write_temp(self.pid, directory=os.path.dirname(new_path))
                try:
                    os.replace(temp, new_path)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp)
        except OSError as exc:
            raise ConfigError(
                f"cannot move pidfile {self.path} to {new_path}: {_reason(exc)}"
            ) from None
        self.path = new_path

    def unlink(self) -> bool:
        """Remove the file if it still names this master; return whether it was removed.

        A file that names another pid belongs to the master that replaced it and is
        kept.  Never raises: a file already gone is fine, and a failure (say, the
        master dropped the privileges it wrote the file with) is logged.
        """
        if self.pid is None:
            return False
        try:
            if read(self.path) != self.pid:
                return False
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("cannot remove pidfile %s: %s", self.path, _reason(exc))
            return False
        except ConfigError as exc:  # unreadable
            logger.warning("%s", exc)
            return False
        return True

    # -- internals --------------------------------------------------------------------------

    def _write_temp(self, pid: int, directory: str | None = None) -> str:
        """A new file holding ``pid``, mode 0644, next to where it will be moved."""
        directory = directory or os.path.dirname(self.path)
        name = os.path.basename(self.path)
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise ConfigError(f"cannot write pidfile {self.path}: {_reason(exc)}") from None
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, f"{pid}\n".encode())
        except OSError as exc:
            os.unlink(temp)
            raise ConfigError(f"cannot write pidfile {self.path}: {_reason(exc)}") from None
        finally:
            os.close(fd)
        return temp

    def _link_if_absent(self, temp: str) -> bool:
        """Put ``temp`` in place only if no pidfile exists; ``False`` if one does.

        A hard link fails atomically on an existing name, so two masters started
        at once cannot both believe the file was free.  On filesystems without
        hard links the caller falls back to checking, then replacing.
        """
        try:
            os.link(temp, self.path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:
                return False
            raise
        return True

    def _check_stale(self, pid: int) -> None:
        """Raise ConfigError if the existing file is held; log that it is stale otherwise."""
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:  # gone meanwhile: nothing to replace
            return
        other = read(self.path)
        if other is None:
            logger.warning("replacing pidfile %s: it holds no pid", self.path)
        elif other in (pid, os.getpid()):
            logger.warning("replacing pidfile %s: it names this process (%d)", self.path, other)
        elif _is_master(other, mtime):
            raise ConfigError(f"pidfile {self.path} is held by a running master (pid {other})")
        else:
            logger.warning(
                "replacing stale pidfile %s (pid %d is not a running master)", self.path, other
            )


def _is_master(pid: int, mtime: float) -> bool:
    """Whether ``pid`` is a live process that may be the master that wrote the file."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if process.create_time() <= mtime + _START_TIME_SLACK:
            return True
        return " ".join(process.cmdline()).startswith(MASTER_TITLE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # alive, but we may not look: assume the worst
        return True


def _reason(exc: OSError) -> str:
    """The OS's wording for an error (``Permission denied``), without the repr noise."""
    return exc.strerror or str(exc)
