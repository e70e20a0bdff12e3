"""On-disk judgement cache: never ask a judge the same (prompt, a, b) twice.

Backed by SQLite (stdlib). Each batch of new judgements is one transaction, so a process
killed mid-write leaves the file as of the last commit, never half-written. Several
processes may share one cache file on a local disk (SQLite locks it); avoid network mounts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rspo.judges.base import Judge, chunk_slices

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    key TEXT PRIMARY KEY,   -- sha256 of [judge_id, prompt, a, b]
    judge_id TEXT NOT NULL,
    p REAL NOT NULL
)
"""
_SQL_VARS = 500  # stay well under SQLite's bound-parameter limit


def judgement_key(judge_id: str, prompt: str, response_a: str, response_b: str) -> str:
    """Hex sha256 identifying one ordered judgement (order matters: a is shown first)."""
    blob = json.dumps([judge_id, prompt, response_a, response_b], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgementCache:
    """A key → P(a ≻ b) store in one SQLite file; safe across threads, forks and crashes."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()  # fail early on an unusable path

    def _connect(self) -> sqlite3.Connection:
        """Open (or reopen after a fork) the connection for this process."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError:  # e.g. filesystems without shared memory: keep rollback
            pass
        try:
            conn.execute("PRAGMA synchronous=FULL")
            with conn:
                conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:  # not a database, or a damaged one
            conn.close()
            raise ValueError(
                f"{self.path}: not a readable judge cache ({e}); it only caches judge calls, "
                "so delete it and run again (the judge is asked again)"
            ) from e
        self._conn, self._pid = conn, os.getpid()
        return conn

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        """The cached values of those ``keys`` that are present."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, float] = {}
        with self._lock:
            conn = self._connect()
            for sl in chunk_slices(len(keys), _SQL_VARS):
                part = keys[sl]
                marks = ",".join("?" * len(part))
                rows = conn.execute(
                    f"SELECT key, p FROM judgements WHERE key IN ({marks})", part
                ).fetchall()
                out.update(rows)
        return out

    def put_many(self, judge_id: str, values: Mapping[str, float]) -> None:
        """Store ``values`` (key → P) in one transaction: all of them are written or none."""
        if not values:
            return
        rows = [(k, judge_id, float(p)) for k, p in values.items()]
        with self._lock:
            conn = self._connect()
            with conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO judgements (key, judge_id, p) VALUES (?, ?, ?)", rows
                )

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def count(self, judge_id: str) -> int:
        """Number of stored judgements made by ``judge_id``."""
        with self._lock:
            row = self._connect().execute(
                "SELECT COUNT(*) FROM judgements WHERE judge_id = ?", (judge_id,)
            )
            return row.fetchone()[0]

    def close(self) -> None:
        """Close the connection (it is reopened on next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> JudgementCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["timeout"])

    def __repr__(self) -> str:
        return f"JudgementCache({str(self.path)!r})"


class CachedJudge(Judge):
    """Wrap a judge so only judgements missing from the on-disk cache reach it, batched.

    The cache key includes the inner ``judge_id`` and the presentation order, so wrapping
    an order-sensitive judge and then symmetrizing caches both orders separately.
    ``stats``: ``hits``/``misses`` count pairs, ``inner_pairs`` the unique pairs sent to
    the inner judge and ``inner_calls`` its ``prefer`` calls.
    """

    def __init__(
        self, judge: Judge, path: str | Path | JudgementCache, batch_size: int | None = None
    ) -> None:
        self.judge = judge
        self.cache = path if isinstance(path, JudgementCache) else JudgementCache(path)
        self.batch_size = batch_size
        self.name = judge.name
        self.stats = {"hits": 0, "misses": 0, "inner_pairs": 0, "inner_calls": 0}

    @property
    def order_sensitive(self) -> bool:  # type: ignore[override]
        return self.judge.order_sensitive

    @property
    def judge_id(self) -> str:
        return self.judge.judge_id

    def __repr__(self) -> str:
        return f"CachedJudge({self.judge!r}, {str(self.cache.path)!r})"

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        jid = self.judge_id
        keys = [judgement_key(jid, *t) for t in zip(prompts, responses_a, responses_b)]
        found = self.cache.get_many(keys)
        todo: dict[str, int] = {}  # unique missing key -> first index
        for i, k in enumerate(keys):
            if k not in found and k not in todo:
                todo[k] = i
        n_miss = sum(k not in found for k in keys)
        self.stats["hits"] += len(keys) - n_miss
        self.stats["misses"] += n_miss
        if todo:
            idx = list(todo.values())
            for sl in chunk_slices(len(idx), self.batch_size):
                part = idx[sl]
                ps = self.judge.prefer(
                    [prompts[i] for i in part],
                    [responses_a[i] for i in part],
                    [responses_b[i] for i in part],
                )
                self.stats["inner_calls"] += 1
                self.stats["inner_pairs"] += len(part)
                new = {keys[i]: p for i, p in zip(part, ps)}
                self.cache.put_many(jid, new)  # commit per chunk: a crash keeps finished work
                found.update(new)
        return [found[k] for k in keys]
