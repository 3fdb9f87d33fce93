"""File output that never leaves a half-written file behind, and the checks and locks of the
folders a run writes."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
from pathlib import Path


def write_bytes_atomic(path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`. The file gets
    the permissions an ordinary open() would give (0666 less the umask), or keeps those of the
    file it replaces."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = _create_temporary(path)
    except OSError as error:
        raise _naming(error, path) from None
    try:
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        os.unlink(temporary)
        if isinstance(error, OSError):
            raise _naming(error, path) from None
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """The same kind of OSError, naming the file the caller asked for (not the temporary file
    beside it); a folder in the way is named too."""
    other = str(error.filename) if error.filename is not None else None
    reason = error.strerror or str(error)
    if other and other != str(path) and not _TEMPORARY.match(Path(other).name):
        reason += f" ({other})"
    return OSError(error.errno, f"cannot write {path}: {reason}", str(path))


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new, exclusively created file beside `path` (mode 0666: the system applies the umask,
    which tempfile.mkstemp's 0600 would not)."""
    for _ in range(100):
        name = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def json_safe(value):
    """value with every NaN or infinite float replaced by None (JSON has no NaN: strict
    parsers reject it). Dicts, lists and tuples are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(path, value) -> None:
    """Strict JSON (a NaN or infinity is written as null), atomically."""
    text = json.dumps(json_safe(value), indent=2, sort_keys=True, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())


# ---- checks and locks for the folders a run writes ---------------------------------------------

_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # what _create_temporary names


def check_writable(folder, what: str) -> Path:
    """Make sure `folder` can be created (if missing) and a file created and removed in it; the
    folders it created are removed again.
    ValueError naming `what` (the option, e.g. "out"), the folder and the system's reason
    otherwise: a read-only mount, a folder without write permission, /proc, a path below a
    regular file. Returns the folder as a Path."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: {folder} exists and is not a directory")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what}: cannot create the folder {folder}: {parent} is a file, not a folder")
            break
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"{what}: cannot create the folder {folder} "
                             f"({error.strerror or error}{_at(error, folder)})") from None
        handle, name = _create_temporary(folder / "write-probe")
        os.close(handle)
        os.unlink(name)
    except OSError as error:  # the probe file
        raise ValueError(f"{what}: cannot write to the folder {folder} ({error.strerror or error})") from None
    finally:
        for path in created:  # leave no trace: what writes there creates the folders again
            try:
                path.rmdir()
            except OSError:
                break
    return folder


def check_output_file(path, what: str) -> Path:
    """Check, before any work, that a file can be written at `path`: it is not a folder, and its
    folder exists or can be created and is writable (the folders created by the check are
    removed again). ValueError naming `what` (the option or argument, e.g. "--json") and the
    path otherwise. Returns the path as a Path."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{what}: expected a file path, got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a directory; give the path of the file to write")
    if path.exists() and not path.is_file():
        raise ValueError(f"{what}: {path} exists and is not a regular file")
    for folder in path.parents:  # the nearest existing one must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"{what}: cannot write {path}: {folder} is a file, not a folder")
            break
    check_writable(path.parent, what)
    return path


def _at(error: OSError, folder: Path) -> str:
    return f": {error.filename}" if error.filename and str(error.filename) != str(folder) else ""


def remove_temporaries(folder, prefix: str = "", recursive: bool = False) -> list[Path]:
    """Remove the temporary files that write_bytes_atomic leaves when its process is killed
    hard (.NAME.<12 hex>.tmp), only those whose name starts with `prefix`. Call it only while
    holding the lock of what writes them. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        if _TEMPORARY.match(path.name) and path.name.startswith(prefix) and path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _flock(fd: int, path: Path, flags: int) -> None:
    import fcntl

    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        raise
    except OSError as error:  # e.g. a network file system without locks
        raise ValueError(f"cannot lock {path} ({error.strerror or error}); use a folder on a local file "
                         f"system") from None


class LockHeld(ValueError):
    """Another live process holds the lock."""


class FileLock:
    """An exclusive lock held through a lock file that names its holder: PID, host, start time
    and command line (JSON). The kernel's flock does the locking, so a lock whose process died,
    however it died, is free: its file is found without a holder and taken over. The file is
    removed on release."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd = None
        self.previous = None  # what the file said when taken over from a dead process

    @staticmethod
    def holder(path) -> dict | None:
        try:
            value = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    @staticmethod
    def describe(holder: dict | None) -> str:
        if not holder:
            return "another process"
        command = holder.get("command")
        return (f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                + (f": {command}" if command else ""))

    def acquire(self, blocking: bool = False, on_wait=None) -> "FileLock":
        """Take the lock. Held by a live process: raise LockHeld naming it, or (blocking) call
        on_wait(holder) once and wait."""
        import fcntl
        import socket
        import sys
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                try:
                    _flock(fd, self.path, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self.holder(self.path)
                    if not blocking:
                        raise LockHeld(f"{self.path} is held by {self.describe(holder)}") from None
                    if on_wait is not None:
                        on_wait(holder)
                        on_wait = None
                    _flock(fd, self.path, fcntl.LOCK_EX)
                try:  # the holder we waited for may have removed the file: lock the one that is there
                    current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    os.close(fd)
                    continue
                with os.fdopen(os.dup(fd), "r+b") as file:
                    old = file.read()
                    file.seek(0)
                    file.truncate()
                    file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                           "command": " ".join(sys.argv)}).encode())
                    file.flush()
                try:
                    previous = json.loads(old) if old else None
                except ValueError:
                    previous = None
                self.previous = previous if isinstance(previous, dict) else None
                self.fd = fd
                return self
            except BaseException:
                if self.fd != fd:
                    os.close(fd)
                raise

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
