"""Crash-safe file I/O: atomic whole-file writes and append-only JSONL with fsync.

A failed write (disk full, quota, I/O error, Ctrl-C) never leaves half a record behind:
whole-file writes go through a temp file that is removed on failure, and a failed append
truncates the file back to where it was. OS errors name the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (short writes are continued)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # no progress: do not spin
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


@contextlib.contextmanager
def writing(path: str | Path, cleanup: str | Path | None = None):
    """Around a write of ``path`` by a library whose errors name no file (safetensors' disk
    full is a ``SafetensorError`` "I/O error"): re-raised as an OSError naming ``path``;
    ``cleanup`` (the temp directory being filled) is removed on any failure."""
    try:
        yield
    except BaseException as e:
        if cleanup is not None:
            import shutil

            shutil.rmtree(cleanup, ignore_errors=True)
        if isinstance(e, OSError) and e.filename:
            raise
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
            code = getattr(e, "errno", None) or errno.EIO
            raise OSError(code, f"could not write ({e})", str(path)) from e
        raise


def _named(e: BaseException, path: Path) -> BaseException:
    """``e`` with the file name filled in when it is an OSError that lacks one."""
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or str(e), str(path))
    return e


def _umask() -> int:
    try:  # Linux: read it without setting it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename, so readers never see half a file.

    On any failure the temp file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            with contextlib.suppress(OSError, AttributeError):  # chmod-less filesystems
                os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it (mkstemp: 0600)
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        named = _named(e, path)
        if named is e:
            raise
        raise named from e


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file in the error if it is malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines and fsync, so a finished record survives a crash.

    All records are serialised before a byte is written, and a failed write or fsync
    (e.g. a full disk) truncates the file back to its previous end before the error is
    raised: the file only ever holds whole records, all of the call's or none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException as e:
            try:
                os.ftruncate(fd, start)
            except OSError:  # pragma: no cover - nothing better to do; readers drop torn tails
                pass
            named = _named(e, path)
            if named is e:
                raise
            raise named from e
    finally:
        os.close(fd)


def read_jsonl(path: str | Path, tolerate_torn_tail: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line is an error naming file and line number.

    With ``tolerate_torn_tail`` a last line without a newline (a write cut by a crash) is
    dropped and the file is truncated to the last complete record, so appends can resume.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if tolerate_torn_tail and data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    out = []
    # split on "\n" only: str.splitlines() also cuts at U+0085/U+2028/U+2029, which
    # json.dumps(ensure_ascii=False) leaves raw inside a record's strings
    for lineno, line in enumerate(data.decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from e
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        out.append(obj)
    return out
