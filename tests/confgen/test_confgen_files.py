"""Atomic writes: a reader never sees a partial file; unchanged content is not rewritten."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from callgate.confgen.files import NEW_FILE_MODE, write_if_changed


def test_new_file_then_unchanged_keeps_inode_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "pjsip_callgate.conf"
    first = write_if_changed(path, "; generated\n[alice]\ntype = endpoint\n")
    assert first.changed and path.read_text() == "; generated\n[alice]\ntype = endpoint\n"
    assert stat.S_IMODE(path.stat().st_mode) == NEW_FILE_MODE  # it holds secrets
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 5_000_000_000))
    old = path.stat()
    again = write_if_changed(path, "; generated\n[alice]\ntype = endpoint\n")
    assert not again.changed
    now = path.stat()
    assert (now.st_ino, now.st_mtime_ns) == (old.st_ino, old.st_mtime_ns)


def test_changed_content_replaces_the_file_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "sip_callgate.conf"
    path.write_text("old\n")
    path.chmod(0o644)
    inode = path.stat().st_ino
    result = write_if_changed(path, "new\n")
    assert result.changed and path.read_text() == "new\n"
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sip_callgate.conf"]  # no temp left


def test_a_reader_only_ever_sees_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "iax_callgate.conf"
    versions = [f"; version {i}\n" + f"[peer{i}]\nsecret = {'x' * 200_000}\n" for i in range(2)]
    write_if_changed(path, versions[0])
    seen: set[str] = set()
    partial: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = path.read_text()
            if data in versions:
                seen.add(data[:12])
            else:
                partial.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            write_if_changed(path, versions[(i + 1) % 2])
    finally:
        stop.set()
        thread.join()
    assert partial == []
    assert seen  # the reader did read while the writer wrote


def test_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pjsip_callgate.conf"
    path.write_text("old\n")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)  # the file system, not our code
    with pytest.raises(OSError, match="No space"):
        write_if_changed(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pjsip_callgate.conf"]
