"""The one atomic writer (runtime/write.py): a file or folder appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from gmcf.runtime.write import atomic_path, write_text


def test_a_file_appears_only_when_complete(tmp_path: Path) -> None:
    dst = tmp_path / "out" / "result.json"
    write_text(dst, "first\n")
    with pytest.raises(RuntimeError), atomic_path(dst) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert dst.read_text() == "first\n"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["result.json"]
    write_text(dst, "second\n")
    assert dst.read_text() == "second\n"


def test_a_folder_replaces_the_old_one_only_when_complete(tmp_path: Path) -> None:
    dst = tmp_path / "bundle"
    with atomic_path(dst, folder=True) as tmp:
        (tmp / "a.txt").write_text("a")
    with pytest.raises(KeyboardInterrupt), atomic_path(dst, folder=True) as tmp:
        (tmp / "b.txt").write_text("b")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert sorted(p.name for p in dst.iterdir()) == ["a.txt"]
    with atomic_path(dst, folder=True) as tmp:
        (tmp / "c.txt").write_text("c")
    assert sorted(p.name for p in dst.iterdir()) == ["c.txt"]
    assert dst.stat().st_mode & 0o777 == 0o755
