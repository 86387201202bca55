"""Exclusive, atomic publication of an output file.

A run writes into a temporary file beside its target and moves it into place only when it is
complete, so a reader never sees half a file and a failed or stopped run leaves nothing behind:

- The temporary file is named after the target and its owner:
  ``.<name>.gmcf.<host>.<pid>.<start>.tmp``, where ``start`` is the owner's start time (Linux
  ``/proc``), so that a reused process id is not mistaken for the owner. A later run that writes
  the same target removes such a file when its owner, on this host, is gone (killed with -9, a
  power cut). Files of other hosts (a shared folder) are left alone.
- Publication never replaces a file that appeared while the run was writing (another run, a
  user) unless asked to (``force``): a rename that refuses to replace (Linux ``renameat2`` with
  ``RENAME_NOREPLACE``, else a hard link), so two runs writing one path never both succeed.
- The input and the output are compared as files (device and inode, through symlinks and hard
  links), not as names.
- Every operating-system error around the output becomes one ``OutputError`` line naming the
  path and the cause (missing folder, permission denied, read-only file system, no space left).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from gmcf.runtime import stops
from gmcf.runtime.errors import OutputError

_SUFFIX = ".tmp"
_MARK = ".gmcf."

_CAUSES = {
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


# -- one-line errors ------------------------------------------------------------------------------
def os_cause(exc: BaseException) -> str:
    """The cause of an OS error in a few words: 'no space left on device'. pyarrow's I/O errors
    carry the errno only in their text ('[errno 28] No space left on device')."""
    code = getattr(exc, "errno", None)
    if not code:
        found = _ERRNO_IN_TEXT.search(str(exc))
        code = int(found.group(1)) if found else None
    if code in _CAUSES:
        return _CAUSES[code]
    if code:
        return os.strerror(code).lower()
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def output_error(exc: BaseException, path: Path, action: str = "cannot write") -> OutputError:
    """One line for an OS error around ``path``; a missing or unwritable folder is named as such."""
    folder = path.parent
    code = getattr(exc, "errno", None) or 0
    if not folder.exists():
        return OutputError(f"{action} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        return OutputError(f"{action} {path}: {folder} is not a folder")
    if code in (errno.EACCES, errno.EPERM) and not os.access(folder, os.W_OK | os.X_OK):
        return OutputError(f"{action} {path}: permission denied (cannot create files in {folder})")
    return OutputError(f"{action} {path}: {os_cause(exc)}")


# -- the paths ------------------------------------------------------------------------------------
def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` are one file: the same device and inode (symlinks followed, hard
    links included), or, when one does not exist yet, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output(dst: Path, force: bool = False, *inputs: Path, label: str = "output") -> None:
    """Refuse, before any work, an output that is one of ``inputs``, a folder, already there
    (without ``force``), or in a folder that does not exist. ``label`` names it in the message."""
    for src in inputs:
        if same_file(src, dst):
            raise OutputError(
                f"{label} {dst} is the input file {src}; the {label} must differ from the input"
                if label == "output" or src == inputs[0]
                else f"{label} {dst} is the output file {src}; they must differ"
            )
    if dst.is_dir():
        raise OutputError(f"{label} {dst} is a folder; give a file name")
    if (dst.exists() or dst.is_symlink()) and not force:
        raise OutputError(f"{label} {dst} exists; pass --force (force=True) to overwrite it")
    if not dst.parent.is_dir():
        what = "does not exist" if not dst.parent.exists() else "is not a folder"
        raise OutputError(f"cannot write {dst}: the folder {dst.parent} {what}")


# -- owners of temporary files --------------------------------------------------------------------
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), '0' where /proc is missing,
    None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        return "0" if _pid_alive(pid) else None
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _base(name: str) -> str:
    # keep the temporary name within the 255 bytes a file name may take
    return name if len(name.encode()) <= 160 else hashlib.sha256(name.encode()).hexdigest()[:32]


def temp_path(dst: Path) -> Path:
    """The temporary file this process writes ``dst`` through."""
    pid = os.getpid()
    return dst.with_name(
        f".{_base(dst.name)}{_MARK}{_host()}.{pid}.{_start_time(pid) or '0'}{_SUFFIX}"
    )


def owner_gone(tmp: Path, dst: Path) -> bool:
    """True for a temporary file of ``dst`` whose owner on this host no longer runs. Also
    recognises the ``.<name>.<pid>.tmp`` files of earlier versions."""
    name = tmp.name
    if not name.endswith(_SUFFIX):
        return False
    stem = name[: -len(_SUFFIX)]
    prefix = f".{_base(dst.name)}{_MARK}"
    if stem.startswith(prefix):
        parts = stem[len(prefix) :].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return False
        host, pid, start = parts
        if host != _host():
            return False
        return _start_time(int(pid)) != start
    legacy = f".{dst.name}."
    if stem.startswith(legacy) and stem[len(legacy) :].isdigit():
        return not _pid_alive(int(stem[len(legacy) :]))
    return False


def remove_stale_temps(dst: Path) -> list[Path]:
    """Remove the temporary files of ``dst`` left by runs that no longer run; returns them."""
    removed: list[Path] = []
    try:
        names = os.listdir(dst.parent)
    except OSError:
        return removed  # the write itself reports what is wrong with the folder
    for name in names:
        if name.startswith(".") and name.endswith(_SUFFIX):
            tmp = dst.parent / name
            if owner_gone(tmp, dst):
                try:
                    tmp.unlink()
                except OSError:  # gone meanwhile, or a folder the write will report on
                    continue
                removed.append(tmp)
    return removed


# -- publication ----------------------------------------------------------------------------------
def _rename_noreplace(src: Path, dst: Path) -> bool | None:
    """rename(2) that fails if ``dst`` exists: True if renamed, False if ``dst`` exists, None
    where the system or file system cannot do it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return None
    at_fdcwd, rename_noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return False
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return None
    raise OSError(code, os.strerror(code), str(dst))


def _publish(tmp: Path, dst: Path, force: bool) -> None:
    if force:
        os.replace(tmp, dst)
        return
    done = _rename_noreplace(tmp, dst)
    if done is None:  # no renameat2: a hard link is as exclusive
        try:
            os.link(tmp, dst)
            done = True
        except FileExistsError:
            done = False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if dst.exists():  # no links either (some network file systems): check, then rename
                done = False
            else:
                os.replace(tmp, dst)
                return
        if done:
            os.unlink(tmp)
    if not done:
        raise OutputError(
            f"output {dst} appeared while this run was writing it (another run?); it was left as "
            "it is and this run's result discarded; pass --force (force=True) to replace it"
        )


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot sync a folder; the file itself must be
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(dst: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write ``dst`` through; on success, make it durable and move
    it into place (never over a file that appeared meanwhile, unless ``force``); on any failure
    or stop, remove it. Stale temporary files of ``dst`` are removed first."""
    dst = Path(dst)
    remove_stale_temps(dst)
    tmp = temp_path(dst)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
    except OSError as exc:
        raise output_error(exc, dst) from exc
    try:
        yield tmp
        stops.check()  # a stop asked for before the output is in place stops the run
        try:
            _fsync(tmp)
            with stops.held():  # a signal waits until the output is in place (or not)
                _publish(tmp, dst, force)
                stops.disarm()
            _fsync(dst.parent, directory=True)
        except OSError as exc:
            raise output_error(exc, dst) from exc
    finally:
        with contextlib.suppress(OSError):  # a clean-up error must not hide the real one
            tmp.unlink()
