"""The one atomic file writer of the package (torch-free, so `data/` uses it too).

`atomic_write(path, content)` writes to a unique temporary name beside `path`
(`.<name>.<random>.tmp`), fsyncs it, renames it over `path` and fsyncs the folder, so a kill
at any moment leaves either the old file or the new one, never half of one, and two
processes writing the same file never share a temporary. A full disk ends in one `RunError`
line that names the file and the space it needs; the old file stays as it was and the
temporary is removed on any failure. Any other failure to write (a read-only folder, no
permission) is an OSError naming `path`, the destination the caller gave, never the temporary.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from pneumolib.base.errors import RunError

Content = bytes | str | Callable[[Path], object]


def atomic_write(path: str | Path, content: Content, *, mode: int = 0o666) -> None:
    """Replace `path` with `content`: bytes, text (UTF-8), or a function that writes the file
    it is given (e.g. `lambda p: df.to_csv(p, index=False)`, `lambda p: fig.savefig(p)`).

    `mode` is the new file's permission before the umask (0o600 keeps a secret private from
    the start). Bytes and text have their size checked against the free space first.
    """
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
    if isinstance(data, bytes):
        free = _free_bytes(path.parent)
        if free is not None and free < len(data):
            raise _disk_full(path, len(data), free)
    try:
        fd, tmp = _create_temp(path, mode)
    except OSError as e:
        raise _at_destination(e, path) from None
    try:
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            os.close(fd)
            data(tmp)
            _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            needed = len(data) if isinstance(data, bytes) else None
            raise _disk_full(path, needed, _free_bytes(path.parent), written=written) from None
        raise _at_destination(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _at_destination(e: OSError, path: Path) -> OSError:
    """`e` as the same kind of OSError naming `path` (its message names no temporary)."""
    if e.errno is None:
        return OSError(f"{path}: {e}")
    return type(e)(e.errno, e.strerror, str(path))


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new, empty file `.<name>.<random>.tmp` beside `path` -> (open fd, its path). Made
    with O_EXCL (never someone else's) and `mode` under the umask, as a plain open would."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free temporary name beside it")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _disk_full(path: Path, needed: int | None, free: int | None, *, written: int = 0) -> RunError:
    # A function's output size is known only up to where the disk filled: "more than" that.
    need = _mb(needed) if needed is not None else f"more than {_mb(written)}"
    left = f", {_mb(free)} free" if free is not None else ""
    return RunError(
        f"{path}: disk full while saving (needs {need}{left}); free space and re-run "
        "the same command to resume"
    )


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
