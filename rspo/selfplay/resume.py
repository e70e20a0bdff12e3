"""Resume bookkeeping around the stages, in one place.

Stage files are written so that a killed run (SIGKILL, Ctrl-C, a full disk) continues
where it stopped and ends bitwise where an uninterrupted run ends:

- rank 0 reads what is on disk and every rank gets its view (``dist.from_main``); only
  rank 0 writes (``dist.main_only``);
- records are appended (fsync'ed) a batch at a time, and a batch torn by a crash is redone
  whole, so what is computed from it (log π_t, a model judge's outputs) has the batch's
  padding and float rounding;
- a result computed in one go is written atomically and read back on resume;
- ``fault_point(stage, n)`` after each write lets the tests kill the process there
  (``RSPO_FAULT=stage:n``).

The ``<stage>.done`` markers themselves are written by the driver (:mod:`rspo.selfplay.loop`).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rspo.utils.faults import fault_point
from rspo.utils.io import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl

if TYPE_CHECKING:
    from rspo.distributed import DistContext

Record = dict[str, Any]


def pending_chunks(indices: list[int], done: set[int], size: int) -> list[list[int]]:
    """``indices`` cut at the chunk boundaries an uninterrupted run uses (every ``size``),
    keeping the chunks not wholly done. A chunk torn by a crash mid-append is redone whole,
    so its batch, and the float rounding of what is computed from it (log π_t, a model
    judge's outputs), is the uninterrupted run's; callers append only the records not yet
    written."""
    chunks = [indices[s : s + size] for s in range(0, len(indices), size)]
    return [c for c in chunks if not done.issuperset(c)]


def append_chunks(
    dist: DistContext,
    file: Path,
    stage: str,
    indices: list[int],
    chunk: int,
    body: Callable[[list[int]], list[Record]],
) -> None:
    """One record per prompt index of ``indices`` in ``file``, made by ``body(idx)`` (every
    rank gets all of them) a round at a time: ``chunk`` prompts per rank and round, appended
    after each round. Resumes after the records ``file`` holds (a torn chunk is redone)."""
    have = dist.from_main(read_jsonl, file, tolerate_torn_tail=True)
    done = {r["prompt_index"] for r in have}
    pending = pending_chunks(indices, done, chunk)
    W = dist.world_size  # one chunk (generate or judge call) per rank per append
    for s in range(0, len(pending), W):
        idx = [i for part in pending[s : s + W] for i in part]
        recs = [r for r in body(idx) if r["prompt_index"] not in done]
        dist.main_only(append_jsonl, file, recs)
        done.update(r["prompt_index"] for r in recs)
        fault_point(stage, len(done))


def fill_records(
    dist: DistContext,
    file: Path,
    indices: list[int],
    *sources: Callable[[list[int]], list[Record]],
) -> dict[int, Record]:
    """The records of ``file`` for ``indices`` (by prompt index). Those it lacks are asked of
    each source in turn (``source(missing)`` may give some of them) and appended."""
    have = {r["prompt_index"]: r for r in dist.from_main(read_jsonl, file, tolerate_torn_tail=True)}
    for source in sources:
        missing = [i for i in indices if i not in have]
        if not missing:
            break
        recs = source(missing)
        dist.main_only(append_jsonl, file, recs)
        have.update({r["prompt_index"]: r for r in recs})
    return {i: have[i] for i in indices}


def extend_records(
    dist: DistContext,
    file: Path,
    n: int,
    batch: int,
    make: Callable[[list[int]], list[Record]],
    stage: str,
) -> list[Record]:
    """Records 0 … n−1 of ``file``, those missing made by ``make(positions)`` in one append.
    A torn one is redone from the start of its ``batch`` (records per generate call), so
    the batches match a whole run."""
    have = dist.from_main(read_jsonl, file, tolerate_torn_tail=True)
    if len(have) >= n:
        return have[:n]
    start = len(have) // batch * batch
    recs = make(list(range(start, n)))[len(have) - start :]
    dist.main_only(append_jsonl, file, recs)
    fault_point(stage, len(have) + len(recs))
    return have + recs


def copy_missing(file: Path, records: list[Record]) -> None:
    """Append to ``file`` the ``records`` it does not hold yet (resumable like
    :func:`extend_records`)."""
    append_jsonl(file, records[len(read_jsonl(file, tolerate_torn_tail=True)) :])


def stored(file: Path, n: int) -> Any:
    """The JSON ``file`` holds (None when absent or not of ``n`` items: redone)."""
    try:
        have = read_json(file)
    except (OSError, ValueError):
        return None
    lists = have.values() if isinstance(have, dict) else [have]
    return have if all(isinstance(v, list) and len(v) == n for v in lists) else None


def computed_once(
    dist: DistContext,
    file: Path,
    n: int,
    compute: Callable[[], Any],
    saved: Callable[[Any], Any] = lambda value: value,
    stage: str | None = None,
) -> Any:
    """``compute()`` once: written to ``file`` (as ``saved(value)``) and read back on resume
    (a file not of ``n`` items is computed again)."""
    have = dist.from_main(stored, file, n)
    if have is not None:
        return have
    value = compute()
    dist.main_only(atomic_write_json, file, saved(value))
    if stage is not None:
        fault_point(stage, 1)  # a kill here: the resumed stage reads it back
    return value


def complete_records(file: Path, want: list[int]) -> list[Record]:
    """A finished stage's records, checked to hold each of the iteration's prompts once:
    a record lost or repeated by hand (or a disk fault) would otherwise change what is
    trained on without a word."""
    recs = read_jsonl(file)
    got = [r["prompt_index"] for r in recs]
    if sorted(got) != sorted(want):
        missing = sorted(set(want) - set(got))
        counts = collections.Counter(got)
        extra = sorted({i for i, n in counts.items() if n > 1} | (set(got) - set(want)))
        raise ValueError(
            f"{file}: records for prompts {missing[:5]} missing, {extra[:5]} repeated or "
            f"unexpected ({len(got)} records, {len(want)} prompts); delete the file and "
            f"{file.parent.name}'s later *.done markers to redo that stage"
        )
    return recs


def truncate_log(logf: Path, resumed_step: int) -> None:
    """Drop logged training steps after the last saved state (they are redone on resume)."""
    logged = read_jsonl(logf, tolerate_torn_tail=True)
    if any(r["step"] > resumed_step for r in logged):
        kept = [r for r in logged if r["step"] <= resumed_step]
        atomic_write_text(logf, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
