"""The one atomic writer: bytes, text or a writing function; nothing half-written, no
temporary left behind, one line on a full disk, permissions as a plain open gives them."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from pneumolib.base import files
from pneumolib.base.errors import RunError
from pneumolib.base.files import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "content",
    [b"a,b\n1,2\n", "a,b\n1,2\n", lambda p: Path(p).write_text("a,b\n1,2\n")],
    ids=["bytes", "text", "function"],
)
def test_each_kind_of_content_lands_whole(tmp_path: Path, content) -> None:
    path = tmp_path / "t.csv"
    path.write_text("old")
    atomic_write(path, content)
    assert path.read_bytes() == b"a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_mode_follows_the_umask_like_a_plain_open(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write(tmp_path / "a.txt", "x")
    atomic_write(tmp_path / "secret.json", "{}", mode=0o600)
    assert _mode(tmp_path / "a.txt") == _mode(plain)
    assert _mode(tmp_path / "secret.json") & 0o077 == 0


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")

    def broken(p: Path) -> None:
        Path(p).write_bytes(b"half")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_a_full_disk_in_a_writer_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def full(p: Path) -> None:
        Path(p).write_bytes(b"x" * 2_000_000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(RunError) as e:
        atomic_write(tmp_path / "big.csv", full)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "big.csv") in msg and "more than 2.0 MB" in msg
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(files, "_free_bytes", lambda folder: 10)
    with pytest.raises(RunError, match="needs 0.0 MB, 0.0 MB free"):
        atomic_write(tmp_path / "small.json", "x" * 100)


def test_a_failed_write_names_the_destination_not_the_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "no such folder" / "out.csv"
    with pytest.raises(FileNotFoundError) as e:
        atomic_write(dest, "a,b\n")
    assert e.value.filename == str(dest) and ".tmp" not in str(e.value)
    with pytest.raises(OSError) as e:  # a function that fails inside: the destination again
        atomic_write(
            tmp_path / "x.png", lambda p: (_ for _ in ()).throw(PermissionError(13, "no", str(p)))
        )
    assert e.value.filename == str(tmp_path / "x.png") and ".tmp" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # and no temporary left behind
