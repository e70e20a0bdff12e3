"""run.report_to: TensorBoard, wandb (offline) and MLflow (local file store), no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rspo.config import ConfigError, config_from_dict, load_config
from rspo.evaluation import trackers as trk
from rspo.evaluation.trackers import RunTrackers, check_report_to, resolve_report_to

TESTS = Path(__file__).parent


@pytest.mark.parametrize(
    "given, names",
    [([], []), ("none", []), (["none"], []), ("wandb", ["wandb"]),
     ("wandb, mlflow", ["wandb", "mlflow"]), (["tensorboard", "wandb"], ["tensorboard", "wandb"])],
)  # fmt: skip
def test_report_to_reads_as_trl_does(given, names):
    assert resolve_report_to(given) == names
    assert load_config(None, {"run": {"report_to": given}}).run.report_to == given


def test_report_to_defaults_to_none_and_names_bad_trackers(monkeypatch):
    assert resolve_report_to(load_config().run.report_to) == []  # explicit opt-in
    with pytest.raises(ConfigError, match=r"run\.report_to: unknown tracker 'wandbb'; use any"):
        load_config(None, ["--run.report_to", "[tensorboard, wandbb]"])
    with pytest.raises(ConfigError, match=r"'all' cannot be combined"):
        load_config(None, ["--run.report_to", "[all, wandb]"])
    monkeypatch.setitem(trk.TRACKERS, "wandb", ("rspo_no_such_module", "pip install 'rspo[wandb]'"))
    cfg = load_config(None, ["--run.report_to", "wandb"])  # a config is valid anywhere
    with pytest.raises(ConfigError, match=r"wandb is not installed .*pip install 'rspo\[wandb\]'"):
        check_report_to(cfg.run.report_to)  # ... a run refuses it before any work


class _Fake:
    """A tracker backend recording what it is sent."""

    sent: list[tuple[int, dict[str, float]]] = []
    configs: list[dict] = []

    def __init__(self, run_dir, state, config):
        state.setdefault("id", "fake-1")
        if not state.get("config_sent"):
            _Fake.configs.append(config)
            state["config_sent"] = True

    def log(self, values, step):
        _Fake.sent.append((step, values))

    def close(self):
        pass


def _write_run(root: Path, steps=(3, 2), partial: int = 0) -> None:
    """Iteration dirs as a run leaves them: iteration 0's metrics, then per iteration its
    train_log.jsonl, train.done and metrics.json; ``partial`` steps of one more, unfinished."""

    def it(t):
        d = root / f"iter_{t:03d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    (it(0) / "metrics.json").write_text(json.dumps({"iteration": 0, "win_rate": 0.5}))
    for t, n in enumerate(steps, start=1):
        log = "".join(json.dumps({"step": s, "loss": t + s / 10}) + "\n" for s in range(1, n + 1))
        (it(t) / "train_log.jsonl").write_text(log)
        (it(t) / "train.done").write_text(json.dumps({"step": n}))
        m = {"iteration": t, "win_rate": 0.5 + t / 10, "win_rate_ci": [0.4, 0.9], "ok": True}
        (it(t) / "metrics.json").write_text(json.dumps(m))
    if partial:
        t = len(steps) + 1
        log = "".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(1, partial + 1))
        (it(t) / "train_log.jsonl").write_text(log)


def test_steps_are_global_and_a_resume_sends_nothing_twice(tmp_path, monkeypatch):
    monkeypatch.setitem(trk._BACKENDS, "wandb", _Fake)
    monkeypatch.setattr(_Fake, "sent", [])
    monkeypatch.setattr(_Fake, "configs", [])
    _write_run(tmp_path, steps=(3, 2), partial=1)
    RunTrackers(["wandb"], tmp_path, {"run": {"seed": 0}}).close()  # a tracker added late
    steps = [(s, sorted(v)) for s, v in _Fake.sent]
    assert steps == [
        (0, ["eval/iteration", "eval/win_rate"]),
        *[(s, ["train/iteration", "train/loss"]) for s in (1, 2, 3)],
        (3, ["eval/iteration", "eval/win_rate", "eval/win_rate_ci_high", "eval/win_rate_ci_low"]),
        *[(s, ["train/iteration", "train/loss"]) for s in (4, 5)],
        (5, ["eval/iteration", "eval/win_rate", "eval/win_rate_ci_high", "eval/win_rate_ci_low"]),
        (6, ["train/iteration", "train/loss"]),  # iteration 3's first step, not finished
    ]
    assert _Fake.sent[1][1] == {"train/loss": 1.1, "train/iteration": 1.0}
    assert _Fake.configs == [{"run": {"seed": 0}}]
    state = json.loads((tmp_path / "trackers.json").read_text())
    assert state["wandb"] == {"id": "fake-1", "config_sent": True, "step": 6, "iteration": 2}
    # resumed: training redoes iteration 3 from its last saved state (step 0): the redone
    # step 1 (global 6) is not sent again, step 2 is; so is its evaluation
    _Fake.sent.clear()
    again = RunTrackers(["wandb"], tmp_path, {"run": {"seed": 0}})
    assert _Fake.sent == [] and len(_Fake.configs) == 1
    again.log_train(3, {"step": 1, "loss": 9.0})
    again.log_train(3, {"step": 2, "loss": 8.0})
    (tmp_path / "iter_003" / "train.done").write_text(json.dumps({"step": 2}))
    again.log_eval(3, {"iteration": 3, "win_rate": 0.9})
    again.close()
    assert [s for s, _ in _Fake.sent] == [7, 7]
    assert _Fake.sent[1][1] == {"eval/win_rate": 0.9, "eval/iteration": 3.0}


def _tiny(tmp: Path, model: Path, out: Path, iterations: int, report_to):
    from fixtures_lm import tiny_run

    sections = {
        "run": {"iterations": iterations, "report_to": report_to},
        "training": {"batch_size": 4, "micro_batch_size": 4, "save_steps": 1},
        "data": {"num_prompts": 8, "num_eval_prompts": 4},
        "generation": {"num_samples": 2, "max_new_tokens": 4},
        "evaluation": {"max_new_tokens": 4, "n_boot": 10},
    }
    return config_from_dict(tiny_run(tmp, model, str(out), **sections))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    from fixtures_lm import make_pipeline_env

    return make_pipeline_env(tmp_path_factory.mktemp("trk"))


def _train_then_resume(env, tmp_path, tracker: str) -> tuple[Path, list[dict]]:
    """One iteration, then the run resumed with a second: what each should have sent."""
    from rspo.selfplay.loop import run_selfplay

    tmp, model = env
    out = tmp_path / "run"
    run_selfplay(_tiny(tmp, model, out, 1, [tracker]), log=lambda m: None)
    rows = run_selfplay(_tiny(tmp, model, out, 2, [tracker]), log=lambda m: None)
    return out, rows


def _train_steps(out: Path) -> list[tuple[int, float]]:
    """(global step, loss) of every training step in the run directory."""
    got, offset = [], 0
    for t in (1, 2):
        recs = [json.loads(x) for x in (out / f"iter_{t:03d}" / "train_log.jsonl").open()]
        got += [(offset + r["step"], r["loss"]) for r in recs]
        offset += recs[-1]["step"]
    return got


def test_tensorboard(env, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows = _train_then_resume(env, tmp_path, "tensorboard")
    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    loss = [(e.step, e.value) for e in ea.Scalars("train/loss")]
    assert [s for s, _ in loss] == [s for s, _ in _train_steps(out)]  # each step once
    assert [v for _, v in loss] == pytest.approx([v for _, v in _train_steps(out)])
    wr = [e.value for e in ea.Scalars("eval/win_rate")]
    assert wr == pytest.approx([r["win_rate"] for r in rows])
    (config,) = ea.Tensors("config/text_summary")  # sent once, not again on resume
    assert b"iterations: 1" in config.tensor_proto.string_val[0]


def test_wandb_offline(env, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()
    # wandb has no reader for its offline files: what rspo hands it is recorded on the way
    logged, inits, real_log, real_init = [], [], Run.log, wandb.init

    def log(self, data, step=None, **kw):
        logged.append((step, dict(data)))
        return real_log(self, data, step=step, **kw)

    def init(**kw):
        inits.append(kw)
        return real_init(**kw)

    monkeypatch.setattr(Run, "log", log)
    monkeypatch.setattr(wandb, "init", init)
    out, rows = _train_then_resume(env, tmp_path, "wandb")
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]["id"]
    pattern = f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"
    files = sorted((tmp_path / "wandb_dir").glob(pattern))
    assert len(files) == 2  # the first process and the resumed one: one wandb run id
    assert all(b"eval/win_rate" in f.read_bytes() and b"loss" in f.read_bytes() for f in files)
    assert [i["id"] for i in inits] == [None, run_id] and inits[0]["resume"] == "allow"
    assert inits[0]["config"]["run"]["iterations"] == 1
    loss = [(s, d["train/loss"]) for s, d in logged if "train/loss" in d]
    assert [s for s, _ in loss] == [s for s, _ in _train_steps(out)]  # each step once
    assert [v for _, v in loss] == pytest.approx([v for _, v in _train_steps(out)])
    wr = [d["eval/win_rate"] for _, d in logged if "eval/win_rate" in d]
    assert wr == pytest.approx([r["win_rate"] for r in rows])
    steps = [s for s, _ in logged]
    assert steps == sorted(steps)  # wandb drops a step lower than one it has seen


def test_mlflow_local_file_store(env, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.x: sqlite by default
    out, rows = _train_then_resume(env, tmp_path, "mlflow")
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(uri)
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert [s for s, _ in loss] == [s for s, _ in _train_steps(out)]  # each step once
    assert [v for _, v in loss] == pytest.approx([v for _, v in _train_steps(out)])
    wr = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval/win_rate"))
    assert [v for _, v in wr] == pytest.approx([r["win_rate"] for r in rows])
    run = client.get_run(run_id)
    assert run.data.params["run.iterations"] == "1" and run.info.status == "FINISHED"
    assert run.data.params["objective.regularizer"] == "reverse_kl"
