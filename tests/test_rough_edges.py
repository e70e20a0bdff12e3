"""Rough edges met by a new user (issue 21): each behaviour checked where it is visible."""

from __future__ import annotations

import pytest

from rspo.cli import main


@pytest.mark.parametrize("command", ["train", "eval", "demo", "config"])
def test_help_documents_config_overrides_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--section.key VALUE" in out
    assert "--training.lr 5e-7" in out  # the example


def test_a_key_given_twice_in_a_yaml_config_is_named_with_its_lines(tmp_path):
    from rspo.config import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text("training:\n  lr: 1.0e-6\n  epochs: 1\n  lr: 5.0e-4\n")
    first = r"c\.yaml: duplicate key 'lr' at line 4 \(first given at line 2\)"
    with pytest.raises(ConfigError, match=first):
        load_config(p)
    p.write_text("run:\n  seed: 1\nrun:\n  iterations: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'run' at line 3"):
        load_config(p)
    # a merge key's entries may be overridden; the same key in two sections is no duplicate
    from rspo.config import load_yaml_file

    p.write_text("base: &b {lr: 1.0e-6, epochs: 1}\ntraining:\n  <<: *b\n  lr: 2.0e-6\n")
    assert load_yaml_file(p)["training"] == {"lr": 2.0e-6, "epochs": 1}
    p.write_text("training: {epochs: 1}\nevaluation: {enabled: false}\nrun: {seed: 1}\n")
    assert load_config(p).run.seed == 1


def test_a_sweep_file_with_a_key_given_twice_is_refused(tmp_path):
    from rspo.config import ConfigError
    from rspo.sweep import load_sweep

    p = tmp_path / "s.yaml"
    p.write_text("settings:\n  a: {coefs: [0.1]}\nseeds: [0]\nseeds: [1]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: duplicate key 'seeds' at line 4"):
        load_sweep(p)


def test_an_unknown_chat_role_is_named_with_its_file_and_line(tmp_path):
    import json

    from rspo.data import load_prompts
    from rspo.gym.tokenizer import build_byte_tokenizer

    f = tmp_path / "chat.jsonl"
    ok = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    }
    bad = {"messages": [{"role": "usr", "content": "hello"}]}
    f.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(
        ValueError, match=r"chat\.jsonl:2: messages\[0\] has unknown role 'usr'; use"
    ):
        load_prompts(str(f), build_byte_tokenizer())
    f.write_text(json.dumps(ok) + "\n")
    assert len(load_prompts(str(f), build_byte_tokenizer()).ids) == 1


@pytest.mark.parametrize("command", ["train", "demo"])
@pytest.mark.parametrize("below", [False, True], ids=["file", "under_a_file"])
def test_output_naming_a_file_is_a_clear_error(command, below, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    out = f / "run" if below else f
    assert main([command, "--output", str(out), "--run.iterations", "1"]) == 2
    err = capsys.readouterr().err
    what = f"is under {f}, a file" if below else "is a file"
    assert f"error: --output: {out} {what}, not a directory" in err
    assert "Errno" not in err and f.read_text() == "keep me"


def test_a_run_directory_that_is_a_file_is_named_by_the_run_itself(tmp_path):
    from rspo.config import Config, ConfigError
    from rspo.selfplay.rundir import RunDir

    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"run\.output: .*f is a file, not a directory"):
        RunDir(tmp_path / "f").init(Config())


def _fake_run(root, iters=(1, 2)):
    """A directory laid out as a training run with tiny checkpoints (no training needed)."""
    import json

    from fixtures_lm import make_tiny_model_dir

    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"rspo": "0.1.0"}))
    (root / "config.yaml").write_text("{}\n")
    for t in iters:
        make_tiny_model_dir(root / f"iter_{t:03d}" / "checkpoint", seed=t)
    return root


def _eval_args(tmp, model):
    from fixtures_lm import write_prompts

    write_prompts(tmp / "eval.jsonl", 4, prefix="Evaluate")
    judge = "{fn: 'fixtures_lm:lowercase_judge'}"
    return [
        "eval", "--model", str(model), "--preset", "gym",
        "--model.path", str(model), "--data.prompts", str(tmp / "eval.jsonl"),
        "--data.eval_prompts", str(tmp / "eval.jsonl"), "--data.num_eval_prompts", "4",
        "--judge.name", "python", "--judge.kwargs", judge,
        "--evaluation.judge", "python", "--evaluation.judge_kwargs", judge,
        "--evaluation.accuracy_fn", "", "--evaluation.diversity_samples", "0",
        "--evaluation.max_new_tokens", "4", "--evaluation.n_boot", "10",
    ]  # fmt: skip


def test_rspo_eval_of_a_run_checkpoint_writes_beside_it_and_says_where(tmp_path, capsys):
    """Trained with --output, evaluated without --out: the outputs go to that run's
    eval/iter_NNN (not runs/default/eval), and the path is printed."""
    import json

    run = _fake_run(tmp_path / "mine")
    ck = run / "iter_002" / "checkpoint"
    assert main(_eval_args(tmp_path, ck)) == 0
    out, err = capsys.readouterr()
    where = run / "eval" / "iter_002"
    assert json.loads(out[out.index("{\n") :])["model"] == str(ck)
    assert f"outputs go to {where}" in err and f"wrote {where / 'metrics.json'}" in err
    assert (where / "metrics.json").exists() and (where / "model_outputs.json").exists()
    assert not (tmp_path / "runs").exists()
    # --output names the run directory the outputs go under; --out names the folder itself
    assert main([*_eval_args(tmp_path, ck), "--output", str(tmp_path / "other")]) == 0
    assert (tmp_path / "other" / "eval" / "metrics.json").exists()
    assert main([*_eval_args(tmp_path, ck), "--out", str(tmp_path / "exact")]) == 0
    assert (tmp_path / "exact" / "metrics.json").exists()


def test_rspo_eval_of_a_missing_model_creates_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_eval_args(tmp_path, tmp_path / "nope"), "--output", str(out)]) == 2
    assert f"model path {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("which", ["run", "iteration"])
def test_rspo_eval_of_a_run_directory_suggests_its_checkpoints(which, tmp_path, capsys):
    run = _fake_run(tmp_path / "mine")
    model = run if which == "run" else run / "iter_001"
    want = run / ("iter_002" if which == "run" else "iter_001") / "checkpoint"
    assert main([*_eval_args(tmp_path, model), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"is a training run's {'directory' if which == 'run' else 'iteration'}" in err
    assert f"iter_NNN/checkpoint (e.g. --model {want})" in err
    assert not (tmp_path / "o").exists()


def _train_args(tmp, model, out, iterations=2):
    """`rspo train` overrides of a seconds-long run on ``make_pipeline_env``'s model."""
    judge = "{fn: 'fixtures_lm:lowercase_judge'}"
    return [
        "train", "--output", str(out),
        "--model.path", str(model), "--data.prompts", str(tmp / "train.jsonl"),
        "--data.eval_prompts", str(tmp / "eval.jsonl"),
        "--data.num_prompts", "8", "--data.num_eval_prompts", "4",
        "--generation.num_samples", "2", "--generation.max_new_tokens", "4",
        "--judge.name", "python", "--judge.kwargs", judge,
        "--training.epochs", "1", "--training.batch_size", "8",
        "--training.micro_batch_size", "8", "--training.lr", "1e-3",
        "--evaluation.judge", "python", "--evaluation.judge_kwargs", judge,
        "--evaluation.accuracy_fn", "", "--evaluation.diversity_samples", "0",
        "--evaluation.max_new_tokens", "4", "--evaluation.n_boot", "10",
        "--run.iterations", str(iterations), "--run.num_threads", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def piped_train(tmp_path_factory):
    """`rspo train` as a user runs it with its output piped to a log file."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fixtures_lm import make_pipeline_env

    tmp, model = make_pipeline_env(tmp_path_factory.mktemp("piped"))
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    cmd = [sys.executable, "-m", "rspo.cli", *_train_args(tmp, model, tmp / "run")]
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first = proc.stdout.readline()
    rest = proc.stdout.read()
    assert proc.wait() == 0, first + rest
    return first, first + rest, tmp


def test_rspo_train_says_what_it_does_before_loading_anything(piped_train):
    first, log, tmp = piped_train
    assert first.startswith(f"rspo train: starting {tmp / 'run'} (2 iterations, model ")
    assert log.index(first) < log.index("iter 0")


def test_rspo_train_logs_have_no_weight_progress_bars(piped_train):
    _, log, _ = piped_train
    assert "Loading weights" not in log and "Writing model shards" not in log
    assert "\r" not in log


def test_iteration_0_is_announced_as_the_initial_policy_and_counted_apart(piped_train):
    _, log, tmp = piped_train
    assert "iter 0: evaluating the initial policy π_0" in log
    assert "iter 0 (initial policy π_0): win_rate 0.500" in log
    assert (
        "done: 2 iterations trained and evaluated, plus iteration 0 (the initial policy π_0, "
        f"before training): 3 rows in {tmp / 'run'}/metrics.jsonl"
    ) in log


def test_rspo_game_diverging_is_a_message_not_a_traceback(capsys):
    args = ["game", "--regularizer", "forward_kl", "--tau", "1", "--eta", "1e300", "--iters", "5"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: self-play diverged at iteration 2 (eta=1e+300, tau=1.0)")
    assert "lower --eta" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "plot, named",
    [("nodir/p.png", r"folder .*nodir does not exist"), ("p.pnx", r"unknown image format '\.pnx'")],
)
def test_rspo_game_checks_the_plot_path_before_the_run(plot, named, tmp_path, capsys):
    import re

    assert main(["game", "--iters", "10", "--plot", str(tmp_path / plot)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before the table was computed
    assert re.search(rf"error: --plot .*: {named}", err)
    assert main(["game", "--iters", "10", "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


def test_the_demo_table_is_whole_when_piped(tmp_path, capsys, monkeypatch):
    """Piped output is not a terminal: rich would cut the table to 80 columns ("…")."""
    import rspo.selfplay.loop
    from rspo.demo import run_demo

    row = {
        "win_rate": 0.612345, "win_rate_ci": [0.55, 0.67], "lc_win_rate": 0.6, "avg_length": 31.2,
        "win_rate_seen": 0.7, "win_rate_unseen": 0.5, "accuracy": 0.4, "self_bleu": 0.3,
    }  # fmt: skip
    rows = [{"iteration": t, **row} for t in range(3)]
    monkeypatch.setattr(rspo.selfplay.loop, "run_selfplay", lambda cfg, log: rows)
    monkeypatch.delenv("COLUMNS", raising=False)
    run_demo(str(tmp_path / "demo"), quick=True)
    out = capsys.readouterr().out
    assert "…" not in out
    assert "0.612 [0.550,0.670]" in out and "proxy_win_rate" in out and "self_bleu" in out


def test_rspo_eval_of_a_run_directory_suggests_its_last_checkpoint_by_number(tmp_path, capsys):
    """Past iteration 999 the last checkpoint is iter_1000's, not iter_999's (by name), and
    a copy that is not a numbered iteration (iter_v2) is not an iteration."""
    run = _fake_run(tmp_path / "mine")
    for it in ("iter_999", "iter_1000", "iter_v2"):
        (run / it / "checkpoint").mkdir(parents=True)
    assert main([*_eval_args(tmp_path, run), "--output", str(tmp_path / "o")]) == 2
    assert f"(e.g. --model {run / 'iter_1000' / 'checkpoint'})" in capsys.readouterr().err
