"""The on-disk run directory: layout, stage markers, config compatibility on resume.

runs/NAME/config.yaml          resolved config (resume refuses a changed one)
runs/NAME/run.json             versions and creation time
runs/NAME/.lock                held by the process running it (a second one is refused)
runs/NAME/metrics.jsonl        one row per evaluated iteration (rebuilt from iter dirs)
runs/NAME/iter_001/            generations.jsonl, judgments.jsonl, dataset.json,
                               train_log.jsonl, checkpoint/, eval_outputs.jsonl,
                               model_outputs.json, annotations.json,
                               proxy_judgments.json, kl_logprobs.json, metrics.json,
                               *.done markers
"""

from __future__ import annotations

import errno
import glob
import json
import os
import platform
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from rspo.config import Config, ConfigError, deep_merge, diff_configs
from rspo.utils.io import atomic_write_json, atomic_write_text, read_json, read_jsonl

#: keys that may change between a run and its resumption
RESUMABLE_KEYS = (
    "run.iterations",
    "run.output",
    "run.keep_checkpoints",
    "run.num_threads",
    "run.cache_dir",
    "run.keep_freed_memory",
    "run.report_to",
    "model.keep_reference",
    "model.cpu_linear",
    "run.stop_on_overoptimization",  # issue 18: turned off to continue past an alarm
)
#: the file an active run holds an exclusive lock on
LOCK_FILE = ".lock"


def check_output_dir(path: str | Path, key: str = "run.output") -> None:
    """``path`` can be a directory: it, or a folder above it, being a file is a ConfigError
    naming it (not ``[Errno 17] File exists``)."""
    p = Path(path)
    for d in (p, *p.parents):
        if d.exists():
            if not d.is_dir():
                what = "is a file" if d == p else f"is under {d}, a file"
                raise ConfigError(
                    f"{key}: {p} {what}, not a directory; give the run a directory path"
                )
            return


def _try_lock(root: Path) -> Any:
    """An open file holding an exclusive lock on ``root/.lock``, or None if another process
    holds it; ``True`` where the platform has no ``fcntl`` (no locking there)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    f = open(root / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held while running
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None  # another process holds it
        warnings.warn(  # e.g. Lustre without -o flock, some NFS/FUSE mounts: ENOSYS, ENOLCK
            f"{root / LOCK_FILE}: this filesystem cannot lock files ({e.strerror}); running "
            "without protection against a second process in the same directory",
            stacklevel=3,
        )
        return True
    return f


def _holder(root: Path) -> str:
    try:
        return (root / LOCK_FILE).read_text(encoding="utf-8").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def _in_use(root: Path) -> ConfigError:
    return ConfigError(
        f"run directory {root} is in use by another rspo process ({_holder(root)}); wait for "
        "it to finish, or use another --output"
    )


def _is_run(d: Path) -> bool:
    """Whether ``d`` is an rspo run directory: its ``run.json`` names the rspo version."""
    try:
        return "rspo" in json.loads((d / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _empty_in_place(d: Path) -> None:
    """Delete what ``d`` holds but its ``.lock``, keeping ``d`` (a symlink's target, a mount
    point): everything is first moved into one hidden folder (renames are atomic), so an
    interrupted delete never leaves a half-emptied run that looks like a fresh one."""
    bin_ = Path(tempfile.mkdtemp(prefix=".deleting.", dir=d))
    for c in d.iterdir():
        if c != bin_ and c.name != LOCK_FILE and not c.name.startswith(".deleting."):
            c.rename(bin_ / c.name)
    for c in d.glob(".deleting.*"):  # this one, and any an interrupted delete left
        shutil.rmtree(c, ignore_errors=True)


def remove_output(path: str | Path) -> None:
    """``--overwrite``: delete a previous run's (or demo's) output directory. Refuses the
    current directory or one above it, a directory that is not an rspo run and holds none
    one level down (``run.json`` naming rspo), and a run another process is using, so a
    mistyped path deletes nothing."""
    p = Path(path)
    if not p.exists():
        return
    r, cwd = p.resolve(), Path.cwd().resolve()
    if r == cwd or r in cwd.parents or r == Path.home().resolve():
        raise ConfigError(
            f"--overwrite: refusing to delete {str(p) or '.'} (the current directory, your home "
            "or a directory above them); give the run its own --output"
        )
    if not r.is_dir():
        raise ConfigError(f"--overwrite: {p} is a file, not a run directory; not deleting it")
    inside = list(r.iterdir())
    subdirs = [c for c in inside if c.is_dir() and not c.is_symlink()]
    visible = [c for c in inside if c.name != LOCK_FILE and not c.name.startswith(".deleting.")]
    if visible and not (_is_run(r) or any(_is_run(c) for c in subdirs)):
        raise ConfigError(
            f"--overwrite: {p} holds no rspo run (no run.json written by rspo in it or one "
            "level down); not deleting it"
        )
    held = []  # a run here or one level down (a demo's, rspo eval's) that another process runs
    try:
        for d in [r, *subdirs]:
            if (d / LOCK_FILE).exists():
                lock = _try_lock(d)
                if lock is None:
                    raise _in_use(d)
                held.append(lock)
        if p.is_symlink() or os.path.ismount(r):  # keep the link or mount point itself
            _empty_in_place(r)
            return
        for old in r.parent.glob(f".{glob.escape(r.name)}.deleting.*"):  # an interrupted delete's
            shutil.rmtree(old, ignore_errors=True)
        gone = Path(tempfile.mkdtemp(prefix=f".{r.name}.deleting.", dir=r.parent))
        try:  # out of the way first (onto the empty temp dir), then deleted
            r.rename(gone)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            gone.rmdir()
            _empty_in_place(r)
            return
        shutil.rmtree(gone)
    finally:
        for lock in held:
            if lock is not True:
                lock.close()


def saved_config_diff(cfg_path: Path, cfg: Config) -> list[str]:
    """Dotted keys where the run's saved ``config.yaml`` and ``cfg`` differ; keys added to
    rspo after the run was made count as their defaults."""
    old = yaml.safe_load(Path(cfg_path).read_text(encoding="utf-8")) or {}
    return diff_configs(deep_merge(Config().to_dict(), old), cfg.to_dict())


def _iteration_number(d: Path) -> int | None:
    """The iteration of an ``iter_NNN`` directory; None for any other ``iter_*`` name."""
    n = d.name[5:]
    return int(n) if n.isdigit() else None


def iteration_dirs(root: Path) -> list[tuple[int, Path]]:
    """(t, ``iter_NNN``) of a run directory by iteration number (``iter_1000`` after
    ``iter_999``, not between ``iter_100`` and ``iter_101`` as by name); other ``iter_*``
    names (a copy such as ``iter_v2``) are not iterations."""
    found = ((_iteration_number(d), d) for d in Path(root).glob("iter_*"))
    return sorted((t, d) for t, d in found if t is not None)


class RunDir:
    """Paths and completion markers of one self-play run.

    ``writer=False`` (data-parallel ranks other than 0) reads the same paths but never writes.
    """

    def __init__(self, root: str | Path, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer
        self._lock: Any = None

    def lock(self) -> None:
        """Hold ``.lock`` until :meth:`unlock` (or the process ends): two processes writing
        one run directory would interleave records; the second is refused."""
        if self._lock is None:
            check_output_dir(self.root)
            self.root.mkdir(parents=True, exist_ok=True)
            held = _try_lock(self.root)
            if held is None:
                raise _in_use(self.root)
            if held is not True:
                held.seek(0)
                held.truncate()
                held.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                held.flush()
            self._lock = held

    def unlock(self) -> None:
        """Release the run directory (the lock file stays; only the lock matters)."""
        if self._lock not in (None, True):
            self._lock.close()
        self._lock = None

    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t:03d}"

    def done(self, t: int, stage: str) -> bool:
        return (self.iter_dir(t) / f"{stage}.done").exists()

    def mark_done(self, t: int, stage: str, info: dict[str, Any] | None = None) -> None:
        if not self.writer:
            return
        atomic_write_json(self.iter_dir(t) / f"{stage}.done", {"time": time.time(), **(info or {})})

    def checkpoint(self, t: int) -> Path:
        return self.iter_dir(t) / "checkpoint"

    def init(self, cfg: Config, fresh: bool = False) -> bool:
        """Create the run dir or check it matches ``cfg``; returns True when resuming."""
        if not self.writer:
            raise RuntimeError("RunDir.init is rank 0's job (writer=False here)")
        cfg_path = self.root / "config.yaml"
        self.lock()  # before reading what another process might be writing (setup may hold it)
        if cfg_path.exists() and not fresh:
            diff = [k for k in saved_config_diff(cfg_path, cfg) if k not in RESUMABLE_KEYS]
            if diff:
                raise ConfigError(
                    f"run directory {self.root} was made with a different config; differing keys: "
                    f"{', '.join(diff)}. Use another --output, or --overwrite to start over."
                )
            beyond = [
                t
                for t, d in iteration_dirs(self.root)
                if t > cfg.run.iterations and (d / "metrics.json").exists()
            ]
            if beyond:  # metrics.jsonl would drop their rows
                raise ConfigError(
                    f"run.iterations: {cfg.run.iterations}, but {self.root} already evaluated "
                    f"iteration {beyond[-1]}; lowering it would drop rows from metrics.jsonl. "
                    f"Use run.iterations >= {beyond[-1]} (nothing is redone), or another --output"
                )
            # a kill mid atomic write left its temp file: this run's own (not in a directory
            # another process may hold, such as rspo eval's <run>/eval)
            for tmp in [*self.root.glob(".*.tmp"), *self.root.glob("iter_*/.*.tmp")]:
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
            atomic_write_text(cfg_path, cfg.to_yaml())
            return True
        if not fresh and any(self.root.glob("iter_*")):
            raise ConfigError(
                f"run directory {self.root} holds iteration directories but no config.yaml (an "
                "interrupted --overwrite, or files copied by hand); delete it or use another "
                "--output"
            )
        atomic_write_text(cfg_path, cfg.to_yaml())
        import torch
        import transformers

        from rspo._version import __version__

        atomic_write_json(
            self.root / "run.json",
            {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "rspo": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        )
        return False

    def check_prompts(self, sets: dict[str, Any], resuming: bool) -> None:
        """``prompts.jsonl``: every prompt as the judge (``text``) and the policy (``ids``) see
        it, written when the run starts. Records refer to prompts by index, so a resumed run
        must load the same prompts: a prompt file edited since is an error naming the prompt."""
        path = self.root / "prompts.jsonl"
        rows = [
            {"split": split, "index": i, "text": text, "ids": list(ids)}
            for split, ps in sets.items()
            for i, (text, ids) in enumerate(zip(ps.texts, ps.ids))
        ]
        if resuming and path.exists():
            old = read_jsonl(path)
            keys = {"train": "data.prompts", "eval": "data.eval_prompts"}
            for split, key in keys.items():
                was = [r for r in old if r["split"] == split]
                now = [r for r in rows if r["split"] == split]
                if len(was) != len(now):
                    raise ConfigError(
                        f"{key}: {len(now)} {split} prompts now, {len(was)} when this run "
                        f"started ({path}); restore the prompt file"
                    )
                for a, b in zip(was, now):
                    if a != b:
                        what = "its token ids differ" if a["text"] == b["text"] else (
                            f"{a['text'][:60]!r}, now {b['text'][:60]!r}"
                        )  # fmt: skip
                        raise ConfigError(
                            f"{key}: {split} prompt {a['index']} is not the one this run "
                            f"started with ({path}: {what}); its records refer to prompts by "
                            "position: restore the prompt file (or the tokenizer), or start "
                            "over with --overwrite or another --output (an unchanged file reads "
                            "differently since rspo drops trailing assistant turns of messages)"
                        )
            return
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def rebuild_metrics(self, upto: int | None = None) -> list[dict[str, Any]]:
        """Rewrite metrics.jsonl from the iter_NNN/metrics.json of iterations 0..``upto`` in
        iteration order (a run resumed with fewer iterations reports those; idempotent across
        resumes). Other ``iter_*`` directories (a copy such as ``iter_v2``) are no rows: the
        last row is read as the run's final metrics."""
        rows = [
            read_json(d / "metrics.json")
            for t, d in iteration_dirs(self.root)
            if (upto is None or t <= upto) and (d / "metrics.json").exists()
        ]
        if not self.writer:
            return rows
        atomic_write_text(self.root / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return rows
