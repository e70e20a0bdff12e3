"""Who may write or delete a run directory: one process at a time, ``--overwrite`` only on
rspo output, and an interrupt's resume command that does not delete what was saved."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from rspo.cli import main, resume_command
from rspo.config import ConfigError, load_config
from rspo.selfplay.loop import run_selfplay
from rspo.selfplay.rundir import LOCK_FILE, RunDir, remove_output

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    from fixtures_lm import make_pipeline_env

    return make_pipeline_env(tmp_path_factory.mktemp("own"))


def _cfg(env, out: Path):
    from fixtures_lm import tiny_run

    tmp, model = env
    over = tiny_run(
        tmp,
        model,
        str(out),
        data={"num_prompts": 2, "num_eval_prompts": 2},
        generation={"num_samples": 2, "max_new_tokens": 4},
        evaluation={"enabled": False},
        run={"iterations": 1},
    )
    return load_config(None, over)


def test_a_second_process_on_a_running_directory_is_refused(env, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(env, out)
    held = RunDir(out)
    held.lock()  # another process (flock is per open file: this one conflicts too)
    try:
        with pytest.raises(ConfigError, match=r"in use by another rspo process \(pid \d+"):
            run_selfplay(cfg, log=lambda m: None)
        assert not (out / "config.yaml").exists()  # it wrote nothing
    finally:
        held.unlock()
    run_selfplay(cfg, log=lambda m: None)  # released: the run goes ahead
    assert (out / "iter_001" / "train.done").exists()
    run_selfplay(cfg, log=lambda m: None)  # and a finished run released its own lock


def test_overwrite_deletes_rspo_output_only(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.md").write_text("keep me")
    for path in ("", ".", str(tmp_path.parent)):
        with pytest.raises(ConfigError, match="refusing to delete"):
            remove_output(path)
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no rspo run"):
        remove_output(other)
    # the CLI path: an empty run.output with --overwrite deletes nothing
    assert main(["train", "--run.output", "", "--overwrite"]) == 2
    assert (tmp_path / "notes.md").read_text() == "keep me"
    assert (other / "chapter1.tex").read_text() == "keep me"

    run = tmp_path / "run"
    run_selfplay(_cfg(env, run), log=lambda m: None)
    held = RunDir(run)
    held.lock()
    try:
        with pytest.raises(ConfigError, match="in use by another rspo process"):
            remove_output(run)
    finally:
        held.unlock()
    assert (run / "config.yaml").exists() and (run / LOCK_FILE).exists()
    demo = tmp_path / "demo"  # a demo holds runs one level down
    (demo / "sppo").mkdir(parents=True)
    (demo / "sppo" / "run.json").write_text('{"rspo": "0.1.0"}')
    proj = tmp_path / "proj"  # a config.yaml alone is anybody's file
    (proj / "myproj").mkdir(parents=True)
    (proj / "myproj" / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="holds no rspo run"):
        remove_output(proj)
    (demo / "summary.json").write_text("{}")
    for path in (run, demo, tmp_path / "absent"):
        remove_output(path)
        assert not path.exists()


def test_resume_command_drops_overwrite_and_quotes(tmp_path):
    argv = ["/venv/bin/rspo", "train", "--output", "/tmp/with space", "--overwrite", "--x", "1"]
    cmd = resume_command(argv)
    assert "--overwrite" not in cmd
    assert shlex.split(cmd) == ["rspo", "train", "--output", "/tmp/with space", "--x", "1"]
    abbreviated = ["/venv/bin/rspo", "demo", "--overw", "--output", "d"]  # argparse takes it
    assert shlex.split(resume_command(abbreviated, "demo")) == ["rspo", "demo", "--output", "d"]
    assert "without --overwrite" in resume_command(["python", "-m", "rspo.cli"])
    assert main(["train", "--output", str(tmp_path / "r"), "--resume", "--overwrite"]) == 2


def test_overwrite_spares_a_run_held_one_level_down_and_keeps_a_symlink(tmp_path):
    """A demo's (or rspo eval's) run sits in a subdirectory: a process running it holds its
    lock there. A symlinked --output keeps its link; only the target's contents go."""
    demo = tmp_path / "demo"
    RunDir(demo / "sppo").lock()
    held = RunDir(demo / "rspo")
    held.lock()
    (demo / "sppo" / "run.json").write_text('{"rspo": "0.1.0"}')
    try:
        with pytest.raises(ConfigError, match=r"demo/rspo is in use by another rspo process"):
            remove_output(demo)
        assert (demo / "sppo" / "run.json").exists()
    finally:
        held.unlock()
    target = tmp_path / "elsewhere"
    (target / "iter_001").mkdir(parents=True)
    (target / "run.json").write_text('{"rspo": "0.1.0"}')
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    remove_output(link)
    assert link.is_symlink() and target.is_dir() and not list(target.iterdir())
    RunDir(link).lock()  # the run is recreated through the link
    # an interrupted delete (a leftover sibling) does not block the next --overwrite
    run = tmp_path / "run"
    (run / "iter_001").mkdir(parents=True)
    (run / "run.json").write_text('{"rspo": "0.1.0"}')
    stale = tmp_path / ".run.deleting.123"
    (stale / "iter_009").mkdir(parents=True)
    remove_output(run)
    assert not run.exists() and not stale.exists()


def test_a_filesystem_without_locks_runs_unprotected_with_a_warning(tmp_path, monkeypatch):
    """Lustre without -o flock or some NFS mounts answer ENOSYS/ENOLCK: that is no lock,
    not a lock held by another process."""
    import errno
    import fcntl

    def nolock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", nolock)
    with pytest.warns(UserWarning, match="cannot lock files"):
        RunDir(tmp_path / "run").lock()


def test_rspo_eval_releases_its_directory(env, tmp_path, monkeypatch):
    """Its run object may outlive the call (a caller, a traceback, a reference cycle): the
    directory must be unlocked when evaluate_model returns, not when that object dies."""
    import rspo.selfplay.loop as loop_mod
    from rspo.selfplay.standalone import evaluate_model

    kept = []
    real_init = loop_mod.SelfPlayRun.__init__

    def keep(self, *a, **k):
        kept.append(self)
        real_init(self, *a, **k)

    monkeypatch.setattr(loop_mod.SelfPlayRun, "__init__", keep)
    cfg = _cfg(env, tmp_path / "ev")
    cfg.evaluation.enabled = True
    evaluate_model(cfg, str(env[1]))
    evaluate_model(cfg, str(env[1]))  # the same output directory again, in this process
    assert len(kept) == 2


def test_a_resume_removes_temp_files_a_kill_left(env, tmp_path):
    """A kill inside an atomic write leaves its hidden temp file; the resumed run (which holds
    the lock, so no other writer owns it) removes it."""
    out = tmp_path / "run"
    cfg = _cfg(env, out)
    run_selfplay(cfg, log=lambda m: None)
    stale = [out / ".config.yaml.x1y2.tmp", out / "iter_001" / ".dataset.json.a9b8.tmp"]
    for f in stale:
        f.write_text("half")
    run_selfplay(cfg, log=lambda m: None)
    assert not any(f.exists() for f in stale)
    assert (out / "iter_001" / "dataset.json").exists()


def test_a_directory_with_iterations_but_no_config_is_not_started_over(env, tmp_path):
    """What an interrupted delete could leave (iter_* without config.yaml) is refused, not
    mixed into a fresh run that would skip stages on the old .done markers."""
    out = tmp_path / "half"
    (out / "iter_001").mkdir(parents=True)
    (out / "iter_001" / "generate.done").write_text("{}")
    with pytest.raises(ConfigError, match="iteration directories but no config.yaml"):
        run_selfplay(_cfg(env, out), log=lambda m: None)


def test_a_float16_run_is_refused_before_overwrite_deletes_anything(env, tmp_path):
    out = tmp_path / "keep"
    run_selfplay(_cfg(env, out), log=lambda m: None)
    assert main(["train", "--output", str(out), "--overwrite", "--model.dtype", "float16"]) == 2
    assert (out / "config.yaml").exists()
