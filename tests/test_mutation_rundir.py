"""Run-directory markers: where they go, what they hold, who writes them, and the metrics
rebuilt from the iterations (exact paths and contents); the lock, run.json, the prompt
check of a resumed run and what ``--overwrite`` refuses (exact messages)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from rspo.config import ConfigError, load_config
from rspo.selfplay.rundir import RunDir, remove_output
from rspo.utils.io import atomic_write_json


def test_marker_path_contents_and_readers(tmp_path):
    rd = RunDir(tmp_path / "run")
    assert rd.iter_dir(7) == tmp_path / "run" / "iter_007"
    assert rd.checkpoint(12) == tmp_path / "run" / "iter_012" / "checkpoint"
    assert not rd.done(7, "score")
    rd.mark_done(7, "score", {"examples": 3})
    marker = json.loads((tmp_path / "run" / "iter_007" / "score.done").read_text())
    assert marker["examples"] == 3 and isinstance(marker["time"], float)
    assert rd.done(7, "score") and not rd.done(7, "train") and not rd.done(8, "score")
    reader = RunDir(tmp_path / "run", writer=False)
    reader.mark_done(7, "train")  # another rank: reads the markers, never writes one
    assert reader.done(7, "score") and not reader.done(7, "train")
    rd.mark_done(7, "train")
    assert set(json.loads((rd.iter_dir(7) / "train.done").read_text())) == {"time"}


def test_rebuild_metrics_stops_at_upto_and_only_the_writer_writes(tmp_path):
    rd = RunDir(tmp_path)
    for t in range(4):
        atomic_write_json(rd.iter_dir(t) / "metrics.json", {"iteration": t})
    rd.iter_dir(4).mkdir()  # an iteration without metrics yet
    assert RunDir(tmp_path, writer=False).rebuild_metrics(2) == [{"iteration": t} for t in range(3)]
    assert not (tmp_path / "metrics.jsonl").exists()
    assert rd.rebuild_metrics(2) == [{"iteration": t} for t in range(3)]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"iteration": t} for t in range(3)]
    assert len(rd.rebuild_metrics()) == 4


def test_overwrite_through_a_link_survives_a_file_that_cannot_be_deleted(tmp_path, monkeypatch):
    """Emptying a symlinked run in place: the old contents are moved into one hidden folder
    first, so a file that cannot be deleted (busy on NFS, say) leaves that folder behind
    and the run empty, instead of failing the --overwrite; the next one removes it."""
    import os

    from rspo.selfplay.rundir import remove_output

    target = tmp_path / "elsewhere"
    (target / "iter_001").mkdir(parents=True)
    (target / "iter_001" / "busy").write_text("x")
    (target / "run.json").write_text('{"rspo": "0.1.0"}')
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    unlink = _busy_unlink(monkeypatch)
    remove_output(link)
    left = list(target.iterdir())
    assert [p.name.startswith(".deleting.") for p in left] == [True]
    assert [p.relative_to(left[0]) for p in left[0].rglob("*")] == [
        Path("iter_001"), Path("iter_001/busy")
    ]  # fmt: skip
    monkeypatch.setattr(os, "unlink", unlink)
    remove_output(link)
    assert link.is_symlink() and list(target.iterdir()) == []


# ----------------------------------------------------------------- lock, run.json, overwrite


def test_a_released_directory_can_be_locked_again_by_the_same_run(tmp_path):
    rd = RunDir(tmp_path)
    rd.lock()
    with pytest.raises(ConfigError, match="in use by another rspo process"):
        RunDir(tmp_path).lock()
    rd.unlock()
    rd.unlock()  # releasing twice is harmless
    other = RunDir(tmp_path)
    other.lock()  # released: another run may take it
    other.unlock()
    rd.lock()  # and the first one again: it really holds the lock once more
    with pytest.raises(ConfigError, match="in use by another rspo process"):
        RunDir(tmp_path).lock()
    rd.unlock()


def test_the_lock_holder_is_pid_unknown_when_its_file_says_nothing_or_cannot_be_read(tmp_path):
    from rspo.selfplay.rundir import LOCK_FILE, _holder, _in_use

    assert _holder(tmp_path) == "pid unknown"  # no lock file: cannot be read
    (tmp_path / LOCK_FILE).mkdir()  # a directory where the file should be: cannot be read
    assert _holder(tmp_path) == "pid unknown"
    (tmp_path / LOCK_FILE).rmdir()
    (tmp_path / LOCK_FILE).write_text("  \n")  # empty
    assert _holder(tmp_path) == "pid unknown"
    (tmp_path / LOCK_FILE).write_text("pid 7 on h\n")
    assert str(_in_use(tmp_path)) == (
        f"run directory {tmp_path} is in use by another rspo process (pid 7 on h); wait for "
        "it to finish, or use another --output"
    )


def test_resuming_tolerates_a_temp_file_that_vanishes_before_it_is_removed(tmp_path, monkeypatch):
    """A kill mid atomic write leaves ``.name.tmp`` files, which a resumed init removes; one
    may vanish between the check and the removal (another cleaner, a network file system):
    the resume goes on."""
    root = tmp_path / "run"
    cfg = load_config(None, [], preset="gym")
    rd = RunDir(root)
    assert rd.init(cfg) is False
    rd.unlock()
    (root / ".config.yaml.tmp").write_text("x")
    (root / "iter_001").mkdir()
    (root / "iter_001" / ".dataset.json.tmp").write_text("x")
    is_file = Path.is_file

    def vanishing(self):
        found = is_file(self)
        if found and self.name.endswith(".tmp"):
            self.unlink()  # gone before init's own unlink
        return found

    monkeypatch.setattr(Path, "is_file", vanishing)
    rd = RunDir(root)
    assert rd.init(cfg) is True
    rd.unlock()
    assert sorted(p.name for p in root.rglob(".*.tmp")) == []
    assert (root / "config.yaml").is_file()


def test_run_json_records_when_and_with_what_the_run_was_made(tmp_path):
    import platform

    import torch
    import transformers

    import rspo

    cfg = load_config(None, [], preset="gym")
    rd = RunDir(tmp_path / "run")
    before = datetime.now().replace(microsecond=0)
    assert rd.init(cfg) is False
    after = datetime.now()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    created = datetime.strptime(info["created"], "%Y-%m-%dT%H:%M:%S")  # local time, ISO 8601
    assert before <= created <= after
    assert (info["rspo"], info["torch"], info["transformers"], info["python"]) == (
        rspo.__version__, torch.__version__, transformers.__version__,
        platform.python_version(),
    )  # fmt: skip
    rd.unlock()


def _sets(train_texts, train_ids, eval_texts=("e",), eval_ids=((9,),)):
    return {
        "train": SimpleNamespace(texts=list(train_texts), ids=[list(i) for i in train_ids]),
        "eval": SimpleNamespace(texts=list(eval_texts), ids=[list(i) for i in eval_ids]),
    }


def test_a_resumed_run_names_the_changed_prompt_and_how_it_changed(tmp_path):
    rd = RunDir(tmp_path)
    rd.check_prompts(_sets(["a", "b"], [[1], [2]]), resuming=False)
    rd.check_prompts(_sets(["a", "b"], [[1], [2]]), resuming=True)  # unchanged: fine
    path = tmp_path / "prompts.jsonl"
    with pytest.raises(ConfigError) as e:
        rd.check_prompts(_sets(["a", "b"], [[1], [2, 3]]), resuming=True)
    assert str(e.value).startswith(
        f"data.prompts: train prompt 1 is not the one this run started with ({path}: "
        "its token ids differ); its records refer to prompts by position"
    )
    with pytest.raises(ConfigError) as e:
        rd.check_prompts(_sets(["a", "B"], [[1], [2]]), resuming=True)
    assert f"({path}: 'b', now 'B');" in str(e.value)
    with pytest.raises(ConfigError) as e:
        rd.check_prompts(_sets(["a", "b"], [[1], [2]], ["e", "f"], [[9], [8]]), resuming=True)
    assert str(e.value) == (
        f"data.eval_prompts: 2 eval prompts now, 1 when this run started ({path}); "
        "restore the prompt file"
    )


def test_overwrite_refusals_name_the_path_given(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for given in (str(work), str(tmp_path)):
        with pytest.raises(ConfigError) as e:
            remove_output(given)
        assert str(e.value) == (
            f"--overwrite: refusing to delete {given} (the current directory, your home or a "
            "directory above them); give the run its own --output"
        )
    (work / "f.txt").write_text("x")
    with pytest.raises(ConfigError) as e:
        remove_output("f.txt")
    assert str(e.value) == "--overwrite: f.txt is a file, not a run directory; not deleting it"


def test_overwrite_does_not_count_a_linked_run_as_one_level_down(tmp_path):
    """A directory holding a file and a symlink to a run is not a run directory: deleting
    it would take the user's file (the link is not followed into the run)."""
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    atomic_write_json(run / "run.json", {"rspo": "0"})
    d = tmp_path / "out"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    (d / "linked").symlink_to(run, target_is_directory=True)
    with pytest.raises(ConfigError) as e:
        remove_output(d)
    assert str(e.value) == (
        f"--overwrite: {d} holds no rspo run (no run.json written by rspo in it or one level "
        "down); not deleting it"
    )
    assert (d / "notes.txt").read_text() == "mine" and (run / "run.json").exists()
    (d / "sub").mkdir()  # a real run one level down: that directory may go
    atomic_write_json(d / "sub" / "run.json", {"rspo": "0"})
    remove_output(d)
    assert not d.exists() and (run / "run.json").exists()


# ----------------------------------------------------------------- init refusals, messages
def test_lowering_iterations_names_the_last_evaluated_iteration(tmp_path):
    """A run evaluated iterations 0..5 (metrics.json in iter_000..iter_005), resumed with
    run.iterations 2: iterations 3, 4 and 5 would lose their rows; the message names the
    LAST of them, 5, twice (what was evaluated, and the smallest iterations that keeps it)."""
    root = tmp_path / "run"
    rd = RunDir(root)
    cfg = load_config(None, {"run.iterations": 5}, preset="gym")
    assert rd.init(cfg) is False
    rd.unlock()
    for t in range(6):
        atomic_write_json(rd.iter_dir(t) / "metrics.json", {"iteration": t})
    fewer = load_config(None, {"run.iterations": 2}, preset="gym")
    rd = RunDir(root)
    with pytest.raises(ConfigError) as e:
        rd.init(fewer)
    rd.unlock()
    assert str(e.value) == (
        f"run.iterations: 2, but {root} already evaluated iteration 5; lowering it would drop "
        "rows from metrics.jsonl. Use run.iterations >= 5 (nothing is redone), or another "
        "--output"
    )


def test_iteration_directories_without_a_config_name_the_way_out(tmp_path):
    root = tmp_path / "run"
    (root / "iter_000").mkdir(parents=True)
    rd = RunDir(root)
    with pytest.raises(ConfigError) as e:
        rd.init(load_config(None, [], preset="gym"))
    rd.unlock()
    assert str(e.value) == (
        f"run directory {root} holds iteration directories but no config.yaml (an "
        "interrupted --overwrite, or files copied by hand); delete it or use another --output"
    )
    assert not (root / "config.yaml").exists()


def test_a_changed_prompt_message_names_every_way_out(tmp_path):
    rd = RunDir(tmp_path)
    rd.check_prompts(_sets(["a", "b"], [[1], [2]]), resuming=False)
    with pytest.raises(ConfigError) as e:
        rd.check_prompts(_sets(["a", "b"], [[1], [2, 3]]), resuming=True)
    assert str(e.value) == (
        f"data.prompts: train prompt 1 is not the one this run started with "
        f"({tmp_path / 'prompts.jsonl'}: its token ids differ); its records refer to prompts "
        "by position: restore the prompt file (or the tokenizer), or start over with "
        "--overwrite or another --output (an unchanged file reads differently since rspo "
        "drops trailing assistant turns of messages)"
    )


def _busy_unlink(monkeypatch):
    """os.unlink failing on files named ``busy`` (a file NFS or Windows keeps busy)."""
    import os

    unlink = os.unlink

    def stuck(path, *a, **k):
        if os.fspath(path).endswith("busy"):
            raise PermissionError(1, "Operation not permitted", os.fspath(path))
        return unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", stuck)
    return unlink


def _run_with(root, *files):
    (root / "iter_000").mkdir(parents=True)
    atomic_write_json(root / "run.json", {"rspo": "0.1.0"})
    for name in files:
        (root / "iter_000" / name).write_text("x")


def test_an_interrupted_overwrite_leaves_a_hidden_folder_that_the_next_one_removes(
    tmp_path, monkeypatch
):
    """--overwrite moves the run onto a hidden ``.<name>.deleting.*`` folder beside it, then
    deletes that. A delete that fails half way (a busy file) leaves that folder, and the run
    path free. The next --overwrite of the same path removes such leftovers as best it can:
    one still busy does not stop it, and once the file is free the leftover goes too."""
    import os

    root = tmp_path / "run"
    _run_with(root, "busy")
    unlink = _busy_unlink(monkeypatch)
    with pytest.raises(OSError):
        remove_output(root)
    assert not root.exists()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".run.deleting.")
    inside = sorted(p.relative_to(left) for p in left.rglob("*"))
    assert inside == [Path("iter_000"), Path("iter_000/busy")]
    # a new run at the same path, overwritten while the old leftover's file is still busy
    _run_with(root, "free")
    remove_output(root)
    assert not root.exists() and [p.name for p in tmp_path.iterdir()] == [left.name]
    # the file is free now: the next --overwrite removes the leftover as well
    monkeypatch.setattr(os, "unlink", unlink)
    _run_with(root, "free")
    remove_output(root)
    assert list(tmp_path.iterdir()) == []


def test_output_dir_that_is_a_file_or_under_one_is_named_in_the_error(tmp_path):
    from rspo.selfplay.rundir import check_output_dir

    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ConfigError) as e:
        check_output_dir(f)
    assert str(e.value) == (
        f"run.output: {f} is a file, not a directory; give the run a directory path"
    )
    below = f / "a" / "b"
    with pytest.raises(ConfigError) as e:
        check_output_dir(below, key="eval.output")
    assert str(e.value) == (
        f"eval.output: {below} is under {f}, a file, not a directory; give the run a directory path"
    )
    check_output_dir(tmp_path / "new" / "run")  # nothing there yet: fine


def test_prompts_file_holds_split_index_text_and_ids(tmp_path):
    rd = RunDir(tmp_path)
    sets = {
        "train": SimpleNamespace(texts=["a", "bé"], ids=[(1, 2), (3,)]),
        "eval": SimpleNamespace(texts=["c"], ids=[[4]]),
    }
    rd.check_prompts(sets, resuming=False)
    assert (tmp_path / "prompts.jsonl").read_text(encoding="utf-8").splitlines() == [
        '{"split": "train", "index": 0, "text": "a", "ids": [1, 2]}',
        '{"split": "train", "index": 1, "text": "bé", "ids": [3]}',
        '{"split": "eval", "index": 0, "text": "c", "ids": [4]}',
    ]


def test_try_lock_without_fcntl_runs_unlocked(tmp_path, monkeypatch):
    import sys

    from rspo.selfplay.rundir import _try_lock

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    assert _try_lock(tmp_path) is True
    assert not (tmp_path / ".lock").exists()


# ----------------------------------------------------------------- emptying in place, locks


def test_emptying_in_place_keeps_the_lock_and_an_earlier_leftover_where_it_lies(
    tmp_path, monkeypatch
):
    """A symlinked run is emptied in place: everything but ``.lock`` moves into one hidden
    ``.deleting.*`` folder. The lock file stays (one process may hold it); a leftover of an
    earlier interrupted delete is deleted where it lies, not moved into the new folder (so
    leftovers never nest, and a still-busy one keeps its name until it can go)."""
    import os

    target = tmp_path / "elsewhere"
    (target / "iter_001").mkdir(parents=True)
    (target / "iter_001" / "busy").write_text("x")
    (target / "run.json").write_text('{"rspo": "0.1.0"}')
    rd = RunDir(target)
    rd.lock()
    rd.unlock()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    unlink = _busy_unlink(monkeypatch)
    remove_output(link)
    (left,) = [p for p in target.iterdir() if p.name != ".lock"]
    assert left.name.startswith(".deleting.")
    assert sorted(p.name for p in target.iterdir()) == [left.name, ".lock"]
    assert sorted(p.relative_to(left) for p in left.rglob("*")) == [
        Path("iter_001"), Path("iter_001/busy")
    ]  # fmt: skip
    # a new run in the same place, overwritten while the old leftover's file is still busy
    (target / "iter_002").mkdir()
    (target / "iter_002" / "free").write_text("x")
    (target / "run.json").write_text('{"rspo": "0.1.0"}')
    remove_output(link)
    assert sorted(p.name for p in target.iterdir()) == [left.name, ".lock"]
    assert sorted(p.relative_to(left) for p in left.rglob("*")) == [
        Path("iter_001"), Path("iter_001/busy")
    ]  # fmt: skip
    monkeypatch.setattr(os, "unlink", unlink)  # free now: the next --overwrite removes it
    remove_output(link)
    assert [p.name for p in target.iterdir()] == [".lock"]


def test_a_non_ascii_host_name_is_written_and_read_as_utf8_whatever_the_locale(
    tmp_path, monkeypatch
):
    """The lock file names the holder's host; under a locale whose encoding is not UTF-8
    (here the C locale's ASCII) a host name such as ``hôte`` is still written (UTF-8) and
    read back into the refusal of a second process, instead of failing with a Unicode error."""
    import locale
    import os
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "hôte")
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        rd = RunDir(tmp_path)
        rd.lock()
        with pytest.raises(ConfigError) as e:
            RunDir(tmp_path).lock()
        rd.unlock()
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    holder = f"pid {os.getpid()} on hôte"
    assert (tmp_path / ".lock").read_bytes() == (holder + "\n").encode("utf-8")
    assert str(e.value) == (
        f"run directory {tmp_path} is in use by another rspo process ({holder}); wait for "
        "it to finish, or use another --output"
    )


def test_a_filesystem_without_locks_warns_naming_the_file_and_unlocks_and_overwrites(
    tmp_path, monkeypatch
):
    """flock answering ENOSYS (Lustre without -o flock, some NFS/FUSE mounts): one
    UserWarning naming the lock file and what is unprotected, reported at the code that asked
    for the lock (not inside rundir.py, nor further up than the caller); releasing such a
    run and --overwrite of it go on without a lock to close."""
    import errno
    import fcntl
    import warnings

    import rspo.selfplay.rundir as rundir

    def nolock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", nolock)
    root = tmp_path / "run"
    rd = RunDir(root)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rd.lock()
    assert [(w.category, str(w.message)) for w in rec] == [(
        UserWarning,
        f"{root / '.lock'}: this filesystem cannot lock files (Function not implemented); "
        "running without protection against a second process in the same directory",
    )]  # fmt: skip
    where = Path(rec[0].filename)
    assert where != Path(rundir.__file__) and "_pytest" not in where.parts
    rd.unlock()  # no lock file object to close
    rd.unlock()
    atomic_write_json(root / "run.json", {"rspo": "0.1.0"})
    with pytest.warns(UserWarning, match="cannot lock files"):
        remove_output(root)
    assert not root.exists()


def test_a_refused_overwrite_releases_the_locks_it_took(tmp_path):
    """--overwrite locks the run and each run one level down before deleting; refused
    because one of them is in use, it releases the locks it already took at once (not when
    the exception, which the caller may keep, is gone): the run can be locked again."""
    demo = tmp_path / "demo"
    rd = RunDir(demo)
    rd.lock()
    rd.unlock()  # demo/.lock exists, free: --overwrite takes it first
    busy = RunDir(demo / "sppo")
    busy.lock()
    (demo / "sppo" / "run.json").write_text('{"rspo": "0.1.0"}')
    try:
        with pytest.raises(ConfigError, match="sppo is in use") as e:
            remove_output(demo)
        rd.lock()  # while `e` (and its traceback) is alive
        rd.unlock()
    finally:
        busy.unlock()
    assert e.value is not None and (demo / "sppo" / "run.json").exists()


def test_a_run_that_cannot_be_moved_away_is_emptied_in_place(tmp_path, monkeypatch):
    """--overwrite first moves the run onto a hidden sibling; where the rename is refused
    because the directory is busy (EBUSY) or on another device (EXDEV), the run is emptied in
    place instead (its lock file kept, no sibling left); any other error is raised, the run
    kept."""
    import errno
    import os

    root = tmp_path / "run"
    rename = Path.rename
    refuse = {}

    def refused(self, target):
        if self == root.resolve() and "errno" in refuse:
            raise OSError(refuse["errno"], os.strerror(refuse["errno"]), str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", refused)
    for code in (errno.EBUSY, errno.EXDEV):
        _run_with(root, "free")
        rd = RunDir(root)
        rd.lock()
        rd.unlock()
        refuse["errno"] = code
        remove_output(root)
        assert [p.name for p in tmp_path.iterdir()] == ["run"]
        assert [p.name for p in root.iterdir()] == [".lock"]
        (root / ".lock").unlink()
        root.rmdir()
    _run_with(root, "free")
    refuse["errno"] = errno.EACCES
    with pytest.raises(PermissionError):
        remove_output(root)
    assert (root / "iter_000" / "free").exists() and (root / "run.json").exists()


# ----------------------------------------------------------------- init, prompts, metrics


def test_init_on_a_reader_rank_is_refused_before_touching_the_directory(tmp_path):
    with pytest.raises(RuntimeError) as e:
        RunDir(tmp_path / "run", writer=False).init(load_config(None, [], preset="gym"))
    assert str(e.value) == "RunDir.init is rank 0's job (writer=False here)"
    assert not (tmp_path / "run").exists()


def test_resuming_with_a_changed_config_names_every_differing_key(tmp_path):
    """Keys that may change on a resume (run.iterations raised) are not named; the others
    are, all of them, comma-separated; the saved config is left as it was."""
    root = tmp_path / "run"
    rd = RunDir(root)
    assert rd.init(load_config(None, [], preset="gym")) is False
    rd.unlock()
    saved = (root / "config.yaml").read_text()
    changed = {"run.seed": 7, "generation.temperature": 0.5, "run.iterations": 9}
    rd = RunDir(root)
    with pytest.raises(ConfigError) as e:
        rd.init(load_config(None, changed, preset="gym"))
    rd.unlock()
    assert str(e.value) == (
        f"run directory {root} was made with a different config; differing keys: "
        "generation.temperature, run.seed. Use another --output, or --overwrite to start over."
    )
    assert (root / "config.yaml").read_text() == saved
    rd = RunDir(root)
    assert rd.init(load_config(None, {"run.iterations": 9}, preset="gym")) is True
    rd.unlock()


def test_resuming_counts_evaluated_iterations_by_their_number(tmp_path):
    """An iteration evaluated at exactly run.iterations does not block the resume (nothing
    is lost), nor does a directory that is not a numbered iteration (``iter_v2``, a copy);
    iteration 1000 (``iter_1000``) is beyond run.iterations 999, named as 1000."""
    root = tmp_path / "run"
    rd = RunDir(root)
    assert rd.init(load_config(None, {"run.iterations": 2}, preset="gym")) is False
    rd.unlock()
    for t in range(3):
        atomic_write_json(rd.iter_dir(t) / "metrics.json", {"iteration": t})
    atomic_write_json(root / "iter_v2" / "metrics.json", {"iteration": "copy"})
    rd = RunDir(root)
    assert rd.init(load_config(None, {"run.iterations": 2}, preset="gym")) is True
    rd.unlock()
    atomic_write_json(rd.iter_dir(1000) / "metrics.json", {"iteration": 1000})
    rd = RunDir(root)
    with pytest.raises(ConfigError) as e:
        rd.init(load_config(None, {"run.iterations": 999}, preset="gym"))
    rd.unlock()
    assert str(e.value) == (
        f"run.iterations: 999, but {root} already evaluated iteration 1000; lowering it would "
        "drop rows from metrics.jsonl. Use run.iterations >= 1000 (nothing is redone), or "
        "another --output"
    )


def test_rebuilt_metrics_leave_out_iterations_above_upto_by_number(tmp_path):
    """``upto`` compares iteration numbers, four-digit ones included (``iter_1000`` sorts
    before ``iter_999`` by name); an iteration above it is skipped, not the end of the list,
    and a directory that is not a numbered iteration (``iter_v2``, a copy) is no row, with
    metrics or without: the last row is read as the run's final metrics."""
    rd = RunDir(tmp_path)
    for t in (0, 999, 1000):
        atomic_write_json(rd.iter_dir(t) / "metrics.json", {"iteration": t})
    (tmp_path / "iter_v1").mkdir()
    atomic_write_json(tmp_path / "iter_v2" / "metrics.json", {"iteration": "copy"})
    assert rd.rebuild_metrics() == [{"iteration": t} for t in (0, 999, 1000)]
    assert rd.rebuild_metrics(999) == [{"iteration": 0}, {"iteration": 999}]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines == ['{"iteration": 0}', '{"iteration": 999}']


def test_a_run_that_is_not_resuming_writes_its_prompts_afresh(tmp_path):
    """A run started afresh (not resuming) over an old prompts.jsonl writes its own prompts
    instead of comparing them with the old file's."""
    rd = RunDir(tmp_path)
    rd.check_prompts(_sets(["a", "b"], [[1], [2]]), resuming=False)
    rd.check_prompts(_sets(["c"], [[3]]), resuming=False)
    rows = [json.loads(x) for x in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert rows == [
        {"split": "train", "index": 0, "text": "c", "ids": [3]},
        {"split": "eval", "index": 0, "text": "e", "ids": [9]},
    ]


def test_a_changed_long_prompt_is_shown_by_its_first_60_characters(tmp_path):
    rd = RunDir(tmp_path)
    was, now = "w" * 59 + "xyz", "n" * 59 + "XYZ"
    rd.check_prompts(_sets(["a", was], [[1], [2]]), resuming=False)
    with pytest.raises(ConfigError) as e:
        rd.check_prompts(_sets(["a", now], [[1], [2]]), resuming=True)
    assert f"({tmp_path / 'prompts.jsonl'}: '{'w' * 59}x', now '{'n' * 59}X');" in str(e.value)


def test_rebuilt_metrics_are_in_iteration_order_past_iteration_999(tmp_path):
    """metrics.jsonl lists iterations by number: ``iter_1000`` comes after ``iter_999``
    (by name it sorts between ``iter_100`` and ``iter_101``), so the last row, the run's
    final metrics for rspo.api and sweeps, is the last iteration's."""
    rd = RunDir(tmp_path)
    for t in (0, 100, 101, 999, 1000):
        atomic_write_json(rd.iter_dir(t) / "metrics.json", {"iteration": t})
    rows = [{"iteration": t} for t in (0, 100, 101, 999, 1000)]
    assert rd.rebuild_metrics() == rows
    assert rd.rebuild_metrics(1000) == rows
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == rows
