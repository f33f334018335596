"""Write generated files atomically, and only when their content changed.

A reader (Asterisk reloading) sees the old file or the new one, never a part: the text goes to a
temporary file in the same directory (same file system), is flushed and fsync'ed, then
``os.replace`` swaps it in and the directory is fsync'ed so the rename survives a crash. A file
whose bytes are already the wanted ones is left alone (same inode, same mtime), so a write with
nothing new does not make Asterisk reload anything. A new file gets mode 0640 (it holds
secrets); a replaced file keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

NEW_FILE_MODE = 0o640


@dataclass(frozen=True, slots=True)
class WriteResult:
    path: Path
    changed: bool  # False: the file already held exactly this text and was not touched
    size: int


def write_if_changed(path: str | Path, text: str) -> WriteResult:
    """Write ``text`` (UTF-8) to ``path`` atomically unless it already holds exactly that."""
    target = Path(path)
    data = text.encode("utf-8")
    try:
        if target.read_bytes() == data:
            return WriteResult(target, False, len(data))
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    replaced = False
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        replaced = True
    finally:  # whatever went wrong, never leave the temporary file behind
        if not replaced:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    _fsync_dir(directory)
    return WriteResult(target, True, len(data))


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - some platforms cannot open a directory
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - e.g. a file system without directory fsync
        pass
    finally:
        os.close(dir_fd)
