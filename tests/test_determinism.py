"""Determinism on CPU: the same config and seed give bitwise-identical run directories.

Compared byte for byte: metrics.jsonl and every record file and weight a stage writes
(generations, judgements, the scored dataset, eval outputs, the checkpoint). Two fresh
runs in different processes (different hash seeds) agree; a run killed inside a stage
(SIGKILL via ``RSPO_FAULT``, or Ctrl-C) and resumed agrees with an uninterrupted one; and
another seed gives other samples and other metrics. Runs are tiny (1 iteration).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_selfplay_run import _cfg

import rspo
import rspo.selfplay.loop
import rspo.selfplay.resume
from rspo.config import load_config
from rspo.selfplay.loop import run_selfplay
from rspo.utils.io import read_jsonl

from fixtures_lm import make_pipeline_env

TESTS = Path(__file__).parent

#: what a run writes that must not depend on the process (stage markers hold timestamps)
COMPARED = (
    "metrics.jsonl",
    "eval_baseline.jsonl",
    "iter_000/eval_outputs.jsonl",
    "iter_000/eval_samples.jsonl",
    "iter_000/metrics.json",
    "iter_001/generations.jsonl",
    "iter_001/judgments.jsonl",
    "iter_001/dataset.json",
    "iter_001/checkpoint/model.safetensors",
    "iter_001/eval_outputs.jsonl",
    "iter_001/eval_samples.jsonl",
    "iter_001/model_outputs.json",
    "iter_001/metrics.json",
)


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_pipeline_env(tmp_path_factory.mktemp("det"))


def _args(env, out: str, **overrides) -> list[str]:
    tmp, model = env
    return _cfg(tmp, model, out, **{"run.iterations": 1, **overrides})


def _run(env, out: str, **overrides) -> Path:
    run_selfplay(load_config(None, _args(env, out, **overrides)), log=_quiet)
    return env[0] / out


def _cli(env, out: str, extra_env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    """``rspo train`` in a fresh Python process (one torch thread, like this one)."""
    root = str(Path(rspo.__file__).resolve().parents[1])
    e = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, str(TESTS)]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "rspo.cli", "train", *_args(env, out), *extra],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_same(a: Path, b: Path) -> None:
    for f in COMPARED:
        assert (a / f).exists(), f
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{f} differs between {a} and {b}"


@pytest.fixture(scope="module")
def reference(env) -> Path:
    return _run(env, "fresh_a")


def test_two_fresh_runs_in_different_processes_are_bitwise_identical(env, reference):
    proc = _cli(env, "fresh_b", {"PYTHONHASHSEED": "12345"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(reference, env[0] / "fresh_b")


def test_held_memory_and_reference_settings_change_no_number(env, reference):
    """glibc's default trimming (run.keep_freed_memory off) and π_ref loaded per stage
    (model.keep_reference off) in a fresh process: the same bytes as the defaults."""
    off = ("--run.keep_freed_memory", "false", "--model.keep_reference", "off")
    proc = _cli(env, "defaults_off", {}, *off)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(reference, env[0] / "defaults_off")


def test_another_seed_gives_other_samples_and_metrics(env, reference):
    other = _run(env, "seed_1", **{"run.seed": 1})
    for f in ("metrics.jsonl", "iter_001/generations.jsonl", "iter_001/metrics.json"):
        assert (other / f).read_bytes() != (reference / f).read_bytes(), f
    # the prompts are the same; only the seeded randomness moved
    assert (other / "iter_001/generations.jsonl").read_text().count("prompt_index") == 12


def test_sigkill_inside_training_then_resume_is_bitwise_identical(env, reference):
    out = "killed_train"
    proc = _cli(env, out, {"RSPO_FAULT": "train:3", "PYTHONHASHSEED": "777"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    it = env[0] / out / "iter_001"
    assert (it / "train_state").is_dir() and not (it / "train.done").exists()
    _run(env, out)  # resumed here, in another process than the one that was killed
    _assert_same(reference, env[0] / out)


def _interrupted_then_resumed(env, monkeypatch, out: str, stage: str, n: int) -> Path:
    """Ctrl-C (KeyboardInterrupt) once ``stage`` wrote ``n`` records, then the same run again."""

    def interrupt(name: str, count: int) -> None:
        if name == stage and count >= n:
            raise KeyboardInterrupt

    monkeypatch.setattr(rspo.selfplay.loop, "fault_point", interrupt)
    monkeypatch.setattr(rspo.selfplay.resume, "fault_point", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(env, out)
    assert not (env[0] / out / "iter_001" / "evaluate.done").exists()
    monkeypatch.undo()
    return _run(env, out)


@pytest.mark.parametrize("stage, n", [("judge", 4), ("train", 3), ("evaluate_eval", 1)])
def test_ctrl_c_inside_a_stage_then_resume_is_bitwise_identical(
    env, reference, monkeypatch, stage, n
):
    _assert_same(
        reference, _interrupted_then_resumed(env, monkeypatch, f"ctrl_c_{stage}", stage, n)
    )


def test_resumed_training_logs_each_step_once(env, reference, monkeypatch):
    # today the steps between the last saved state and the kill are logged twice
    out = _interrupted_then_resumed(env, monkeypatch, "ctrl_c_train_log", "train", 3)
    log = "iter_001/train_log.jsonl"
    assert (out / log).read_bytes() == (reference / log).read_bytes()


def test_generation_and_judging_do_not_depend_on_batch_sizes(env, reference):
    other = _run(env, "batches", **{"generation.batch_size": 12, "judge.batch_size": 18})
    f = "iter_001/judgments.jsonl"
    assert (other / f).read_bytes() == (reference / f).read_bytes(), f
    # the same tokens; the log π_t recorded while sampling is rounded differently when the
    # rows are padded to another batch width (as scoring with another micro-batch size is)
    gens = [read_jsonl(d / "iter_001/generations.jsonl") for d in (other, reference)]
    lps = [[r.pop("logp") for g in gs for r in g["responses"]] for gs in gens]
    assert gens[0] == gens[1]
    assert lps[0] == pytest.approx(lps[1], abs=1e-5) and len(lps[0]) > 0


@pytest.mark.parametrize("file", ["iter_001/generations.jsonl", "eval_baseline.jsonl"])
def test_a_record_torn_mid_append_is_redone_with_its_whole_batch(env, reference, monkeypatch, file):
    """A crash (or a full disk) mid-append leaves a torn last line. The resumed run redoes
    that record's whole generate call, not the record alone: log π_t recorded while sampling
    depends on the batch's padding, so a batch of one would change it (and the training)."""
    stage = "generate" if "generations" in file else "evaluate_eval"
    out = f"torn_{stage}"

    def interrupt(name: str, count: int) -> None:
        if name == stage and count >= 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(rspo.selfplay.loop, "fault_point", interrupt)
    monkeypatch.setattr(rspo.selfplay.resume, "fault_point", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(env, out)
    monkeypatch.undo()
    path = env[0] / out / file
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:7])  # the last record torn
    _assert_same(reference, _run(env, out))


def test_a_damaged_training_state_is_skipped_and_the_iteration_retrained(env, reference):
    """SIGKILL in training, then the saved state damaged (a truncated file): resuming warns,
    trains the iteration from its start, and ends where an uninterrupted run ends."""
    out = "killed_damaged_state"
    proc = _cli(env, out, {"RSPO_FAULT": "train:3"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    opt = env[0] / out / "iter_001" / "train_state" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable training state"):
        _run(env, out)
    _assert_same(reference, env[0] / out)


def test_a_record_lost_from_a_finished_stage_is_named(env, reference, tmp_path):
    """generate.done is there but a whole record of generations.jsonl is gone (deleted by
    hand, a disk fault): the next stage refuses, naming the file and the prompt."""
    import shutil

    out = tmp_path / "lost"
    shutil.copytree(reference, out)
    for f in ("judge.done", "score.done", "train.done", "evaluate.done"):
        (out / "iter_001" / f).unlink(missing_ok=True)
    gens = out / "iter_001" / "generations.jsonl"
    lines = gens.read_text().splitlines(keepends=True)
    gens.write_text("".join(lines[:-1]))
    cfg = load_config(None, [*_args(env, "x"), "--run.output", str(out)])
    with pytest.raises(ValueError, match=r"generations\.jsonl: records for prompts \[11\] missing"):
        run_selfplay(cfg, log=_quiet)
