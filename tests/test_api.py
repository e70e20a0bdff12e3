"""The Python API (``rspo.*``), the paper's defaults and the gym preset, and plug-ins
(judges and regularizers from the user's own module) through ``rspo.run`` and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rspo
from rspo.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}

#: a one-iteration gym run small enough for a test (on top of the gym preset)
TINY = {
    "data.num_prompts": 8,
    "data.num_eval_prompts": 8,
    "generation.num_samples": 2,
    "generation.max_new_tokens": 8,
    "training.batch_size": 16,
    "training.micro_batch_size": 16,
    "training.epochs": 1,
    "evaluation.max_new_tokens": 8,
    "evaluation.diversity_samples": 0,
    "evaluation.n_boot": 50,
    "run.iterations": 1,
    "run.num_threads": 1,
}

PLUGIN = '''
"""A user's plug-ins: a judge with a setting, an unregistered judge, a regularizer."""
from pathlib import Path

import rspo
from rspo.objectives import ReverseKL


@rspo.register_judge("plugin-shorter")
class ShorterJudge(rspo.Judge):
    """Prefers the shorter response; appends each call's pair count to ``log``."""

    def __init__(self, log: str, sure: float = 0.9) -> None:
        self.log, self.sure = log, sure

    @property
    def judge_id(self) -> str:
        return f"plugin-shorter[sure={self.sure}]"

    def _prefer(self, prompts, a, b):
        with open(self.log, "a") as f:
            f.write(f"{len(prompts)}\\n")
        return [0.5 if len(x) == len(y) else self.sure if len(x) < len(y) else 1 - self.sure
                for x, y in zip(a, b)]


class LongerJudge(rspo.Judge):
    """Prefers the longer response (no settings: the default judge_id will do)."""

    def _prefer(self, prompts, a, b):
        return [0.5 if len(x) == len(y) else 0.8 if len(x) > len(y) else 0.2
                for x, y in zip(a, b)]


class NoIdJudge(rspo.Judge):
    """Takes a setting but keeps the name as its judge_id: refused."""

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength

    def _prefer(self, prompts, a, b):
        return [0.5] * len(prompts)


@rspo.register_regularizer
class PluginKL(ReverseKL):
    """Reverse KL under another name (a stand-in for a user's divergence)."""

    name = "plugin_rkl"
'''


@pytest.fixture(autouse=True, scope="module")
def _plugins_unregistered():
    """The plug-ins this module registers (imported once per process) are taken out of the
    judge and regularizer registries afterwards, so later test modules see only rspo's."""
    import rspo.judges.base as judges_base
    import rspo.objectives.registry as reg_registry

    yield
    for name in ("plugin-shorter", "test-api-noid", "test-api-file-judge"):
        judges_base._REGISTRY.pop(name, None)
    reg_registry._REGISTRY.pop("plugin_rkl", None)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """The directory holding the user's module ``my_rspo_plugins``."""
    d = tmp_path_factory.mktemp("userpkg")
    (d / "my_rspo_plugins.py").write_text(textwrap.dedent(PLUGIN))
    return d


# ------------------------------------------------------------------ the top level
def test_import_rspo_is_cheap_and_names_resolve_lazily():
    code = (
        "import sys, rspo; heavy = [m for m in ('torch', 'transformers', 'yaml', 'numpy') "
        "if m in sys.modules]; print(heavy); rspo.Config; print('yaml' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


def test_all_public_names_resolve_to_their_definitions():
    from rspo.api import RunResult, run
    from rspo.judges.base import Judge, build_judge, register_judge
    from rspo.objectives import Regularizer, RSPOLoss, register_regularizer

    assert set(rspo.__all__) >= {
        "Config", "load_config", "run", "Judge", "register_judge", "build_judge",
        "RSPOLoss", "Regularizer", "register_regularizer",
    }  # fmt: skip
    for name in rspo.__all__:
        assert getattr(rspo, name) is not None and name in dir(rspo)
    assert (rspo.Config, rspo.load_config, rspo.run, rspo.RunResult) == (
        Config, load_config, run, RunResult,
    )  # fmt: skip
    assert (rspo.Judge, rspo.register_judge, rspo.build_judge) == (
        Judge, register_judge, build_judge,
    )  # fmt: skip
    assert (rspo.RSPOLoss, rspo.Regularizer, rspo.register_regularizer) == (
        RSPOLoss, Regularizer, register_regularizer,
    )  # fmt: skip
    with pytest.raises(AttributeError, match="no attribute 'run_selfplay'"):
        rspo.run_selfplay  # noqa: B018  (internals stay in their modules)


def test_rspoloss_from_the_top_level_is_zero_at_theta_t_when_every_win_rate_is_half():
    from rspo.objectives import SampleBatch

    loss_fn = rspo.RSPOLoss(eta=1000.0, regularizer="reverse_kl[k2]", coef=0.5)
    lp = torch.tensor([-3.0, -5.0], requires_grad=True)
    half = SampleBatch(lp, lp.detach(), lp.detach(), torch.tensor([0.5, 0.5]))
    assert loss_fn(half)[0].item() == 0.0
    won = SampleBatch(lp, lp.detach(), lp.detach(), torch.tensor([1.0, 0.0]))
    assert loss_fn(won)[0].item() == pytest.approx(500.0**2)  # e = -η(p̂ - ½) per row


def test_build_judge_from_the_top_level(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    j = rspo.build_judge("my_rspo_plugins:LongerJudge")
    assert j.prefer(["p", "p"], ["long answer", "x"], ["short", "yy"]) == [0.8, 0.2]


# ------------------------------------------------------------------ defaults and the preset
def test_config_defaults_are_the_papers_recipe():
    from rspo.objectives import PRESETS

    c = Config()
    assert (c.training.optimizer, c.training.lr, c.training.epochs) == ("rmsprop", 5e-7, 1)
    assert c.training.batch_size == 64
    assert (c.objective.eta, c.objective.samples) == (1000.0, "best_worst")
    headline = PRESETS["rspo"]
    assert (c.objective.regularizer, c.objective.coef) == (headline.regularizer, headline.coef)
    g = c.generation
    assert (g.num_samples, g.temperature, g.top_p) == (5, 0.7, 0.9)
    assert 100 <= g.max_new_tokens < 1000 and c.evaluation.max_new_tokens == g.max_new_tokens
    assert c.run.iterations == 3 and c.model.dtype == "float32"
    # the CPU engine tweaks are opt-in
    assert (c.model.cpu_linear, c.run.keep_freed_memory) == ("torch", False)
    # nothing of the gym's
    assert c.model.path is None and c.data.prompts is None and c.data.num_prompts is None
    assert not c.judge.name.startswith("gym") and c.evaluation.accuracy_fn == ""


def test_gym_preset_is_selected_by_name_key_flag_or_model_path(tmp_path):
    by_arg = load_config(preset="gym").to_dict()
    by_flag = load_config(None, ["--preset", "gym"]).to_dict()
    by_path = load_config(overrides={"model.path": "gym"}).to_dict()
    f = tmp_path / "c.yaml"
    f.write_text("preset: gym\n")
    assert by_arg == by_flag == by_path == load_config(f).to_dict()
    g = load_config(preset="gym")
    assert (g.training.optimizer, g.training.lr, g.objective.eta) == ("adamw", 5e-4, 10.0)
    assert (g.generation.num_samples, g.generation.max_new_tokens) == (4, 48)
    assert (g.model.cpu_linear, g.run.keep_freed_memory) == ("auto", True)
    assert (g.judge.name, g.evaluation.judge) == ("gym-proxy", "gym-gold")
    # what the user sets wins over the preset; `preset: none` keeps the paper's defaults
    assert load_config(f, {"training.lr": 1e-3}).training.lr == 1e-3
    plain = load_config(None, ["--preset", "none", "--model.path", "gym"])
    assert plain.model.path == "gym" and plain.training.lr == 5e-7


def test_objective_preset_beats_the_config_presets_values():
    """objective.preset fills what the user did not set, over the gym preset's objective:
    sppo picks best/worst; INPO's τ follows the gym's η."""
    from rspo.objectives import PRESETS

    sppo = load_config(preset="gym", overrides={"objective.preset": "sppo"}).objective
    assert (sppo.samples, sppo.regularizer, sppo.coef) == ("best_worst", "", 0.0)
    inpo = load_config(preset="gym", overrides={"objective.preset": "inpo"}).objective
    assert inpo.tau == pytest.approx(PRESETS["inpo"].tau_eta / 10.0)


def test_preset_errors_and_preset_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'gim'"):
        load_config(preset="gim")
    mine = tmp_path / "mine.yaml"
    mine.write_text("training: {lr: 2.0e-6}\n")
    assert load_config(preset=str(mine)).training.lr == 2e-6
    nested = tmp_path / "nested.yaml"
    nested.write_text("preset: gym\n")
    with pytest.raises(ConfigError, match="no preset: key"):
        load_config(preset=str(nested))


def test_overrides_dict_takes_dotted_keys_and_settings_entries(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("judge: {name: python, kwargs: {fn: 'a:b', batch: 4}}\n")
    cfg = load_config(f, {"training.lr": 1e-6, "judge.kwargs.fn": "c:d", "run": {"seed": 3}})
    assert cfg.training.lr == 1e-6 and cfg.run.seed == 3
    assert cfg.judge.kwargs == {"fn": "c:d", "batch": 4}
    with pytest.raises(ConfigError, match="unknown config key training.lrr"):
        load_config(None, {"training.lrr": 1})


def test_a_run_without_model_or_prompts_says_what_to_set(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"model.path: not set.*preset: gym"):
        rspo.run(Config())
    with pytest.raises(ConfigError, match="data.prompts: not set"):
        rspo.run(load_config(overrides={"model.path": str(tmp_path)}))
    no_eval = {"model.path": str(tmp_path), "data.prompts": "p.jsonl"}
    with pytest.raises(ConfigError, match="data.eval_prompts: not set while evaluation"):
        rspo.run(load_config(overrides=no_eval))
    from rspo.cli import main

    assert main(["train", "--output", str(tmp_path / "r")]) == 2
    assert "model.path: not set" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(TypeError, match="needs a Config"):
        rspo.run({"model": {"path": "gym"}})


def test_evaluation_judge_defaults_to_the_training_judge():
    from rspo.config import evaluation_judge

    cfg = load_config(overrides={"judge.name": "python", "judge.kwargs": {"fn": "m:f"}})
    assert cfg.evaluation.judge is None
    assert evaluation_judge(cfg) == ("python", {"fn": "m:f"})
    gym = load_config(preset="gym")
    assert evaluation_judge(gym) == ("gym-gold", {})


def test_packing_auto_is_off_on_cuda_and_probed_elsewhere(monkeypatch):
    """auto never packs a CUDA model (benchmarks/results/gpu_smoke_h200: slower there)."""
    from rspo import modeling

    class OnCuda(torch.nn.Module):
        def parameters(self, recurse: bool = True):
            yield SimpleNamespace(device=torch.device("cuda", 0))

    probed = []
    monkeypatch.setattr("rspo.packing.packing_supported", lambda m, p: probed.append(m) or True)
    assert modeling.use_packing(OnCuda(), "auto", 0) is False and probed == []
    assert modeling.use_packing(OnCuda(), "on", 0) is True  # asked for: still allowed
    cpu = torch.nn.Linear(2, 2)
    assert modeling.use_packing(cpu, "auto", 0) is True and probed[-1] is cpu


# ------------------------------------------------------------------ judge plug-ins
def test_module_class_judge_gets_the_spec_as_its_name(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    j = rspo.build_judge("my_rspo_plugins:LongerJudge")
    assert j.name == j.judge_id == "my_rspo_plugins:LongerJudge"
    with pytest.raises(ValueError, match="not a Judge subclass"):
        rspo.build_judge("my_rspo_plugins:ReverseKL")
    with pytest.raises(ValueError, match="could not import 'no_such_pkg'"):
        rspo.build_judge("no_such_pkg:Judge")


def test_a_judge_with_settings_must_define_judge_id(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    with pytest.raises(ValueError, match=r"my_rspo_plugins\.NoIdJudge takes settings \(strength\)"):
        rspo.build_judge("my_rspo_plugins:NoIdJudge")

    @rspo.register_judge("test-api-noid")
    class Registered(rspo.Judge):
        def __init__(self, level: int = 1) -> None:
            self.level = level

        def _prefer(self, prompts, a, b):
            return [0.5] * len(prompts)

    with pytest.raises(ValueError, match=r"Registered takes settings \(level\).*judge_id"):
        rspo.build_judge("test-api-noid")


def test_run_imports_registers_plugins_before_the_objective_is_checked(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    reg = {"objective.regularizer": "plugin_rkl", "objective.coef": 0.1}
    if "plugin_rkl" not in __import__("rspo.objectives").objectives.available_regularizers():
        with pytest.raises(ConfigError, match="unknown regularizer 'plugin_rkl'"):
            load_config(preset="gym", overrides=reg)
    cfg = load_config(preset="gym", overrides={**reg, "run.imports": ["my_rspo_plugins"]})
    assert cfg.objective.regularizer == "plugin_rkl" and cfg.run.imports == ["my_rspo_plugins"]
    with pytest.raises(ConfigError, match="run.imports: could not import 'no_such_plugins'"):
        load_config(preset="gym", overrides={"run.imports": ["no_such_plugins"]})


def test_run_imports_takes_a_file_path_once(tmp_path):
    from rspo.judges import available_judges
    from rspo.utils.imports import import_modules

    f = tmp_path / "file_plugin.py"
    f.write_text(
        "import rspo\n"
        "@rspo.register_judge('test-api-file-judge')\n"
        "class FileJudge(rspo.Judge):\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [0.5] * len(p)\n"
    )
    first = import_modules([str(f)])
    assert "test-api-file-judge" in available_judges()
    assert import_modules([str(f)]) == first  # not executed again (no re-registration error)
    assert rspo.build_judge("test-api-file-judge").prefer(["p"], ["a"], ["b"]) == [0.5]


def test_a_module_class_judge_is_found_in_the_working_directory(tmp_path, monkeypatch):
    """``--judge.name my_judges:Cls`` from the console script (whose sys.path lacks the
    working directory) finds ``./my_judges.py`` as ``run.imports: [my_judges]`` does."""
    import sys

    (tmp_path / "cwd_judges_mod.py").write_text(
        "import rspo\n"
        "class CwdJudge(rspo.Judge):\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [1.0] * len(p)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    j = rspo.build_judge("cwd_judges_mod:CwdJudge")
    assert j.name == "cwd_judges_mod:CwdJudge" and j.prefer(["p"], ["a"], ["b"]) == [1.0]
    with pytest.raises(ValueError) as e:  # the import error said once
        rspo.build_judge("cwd_no_such_mod:CwdJudge")
    assert str(e.value) == (
        "judge 'cwd_no_such_mod:CwdJudge': could not import 'cwd_no_such_mod' for "
        "'cwd_no_such_mod:CwdJudge': ModuleNotFoundError: No module named 'cwd_no_such_mod'"
    )


# ------------------------------------------------------------------ end to end on the gym
def _calls(log: Path) -> int:
    return sum(int(n) for n in log.read_text().split()) if log.exists() else 0


def _reg_logged(run_dir: Path, spec: str) -> bool:
    return any(spec in p.read_text() for p in run_dir.glob("iter_001/*.jsonl"))


def test_plugin_judge_and_regularizer_run_through_rspo_run(plugin, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    log = tmp_path / "judge_calls.txt"
    cfg = load_config(
        preset="gym",
        overrides={
            **TINY,
            "run.imports": ["my_rspo_plugins"],
            "judge.name": "plugin-shorter",
            "judge.kwargs": {"log": str(log)},
            "objective.regularizer": "0.5*forward_kl + 0.5*plugin_rkl",
            "objective.coef": 0.5,
            "run.output": str(tmp_path / "run"),
        },
    )
    result = rspo.run(cfg, log=None)
    assert result.run_dir == tmp_path / "run"
    assert result.checkpoint == tmp_path / "run" / "iter_001" / "checkpoint"
    assert (result.checkpoint / "config.json").exists()
    assert [m["iteration"] for m in result.metrics] == [0, 1]
    assert result.final_metrics == result.metrics[-1] and 0 <= result.metrics[1]["win_rate"] <= 1
    assert _calls(log) > 0  # the plug-in judged the K x K pairs
    assert _reg_logged(result.run_dir, "reg/plugin_rkl")
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.metrics


@pytest.mark.parametrize("how", ["imports", "module_class"])
def test_plugin_judge_runs_through_the_cli(plugin, tmp_path, how):
    log = tmp_path / "judge_calls.txt"
    out = tmp_path / "run"
    args = ["--model.path", "gym"]  # selects the gym preset
    for k, v in TINY.items():
        args += [f"--{k}", str(v)]
    if how == "imports":
        args += ["--run.imports", "[my_rspo_plugins]", "--judge.name", "plugin-shorter",
                 "--judge.kwargs", json.dumps({"log": str(log)}),
                 "--objective.regularizer", "0.5*forward_kl + 0.5*plugin_rkl",
                 "--objective.coef", "0.5"]  # fmt: skip
    else:  # no run.imports: the module:Class name imports it
        args += ["--judge.name", "my_rspo_plugins:LongerJudge"]
    proc = subprocess.run(
        [sys.executable, "-m", "rspo.cli", "train", "--output", str(out), *args],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin)])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "iter_001" / "checkpoint" / "config.json").exists()
    saved = load_config(out / "config.yaml")
    if how == "imports":
        assert _calls(log) > 0 and _reg_logged(out, "reg/plugin_rkl")
        assert saved.run.imports == ["my_rspo_plugins"]
    else:
        assert saved.judge.name == "my_rspo_plugins:LongerJudge"


def test_python_api_example_runs(tmp_path):
    out = tmp_path / "example"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), str(out)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iteration 0: win rate vs π_ref 0.500" in proc.stdout
    assert "iteration 1: win rate" in proc.stdout
    assert f"final policy: {out / 'iter_001' / 'checkpoint'}" in proc.stdout
    assert (out / "iter_001" / "checkpoint" / "config.json").exists()
    assert load_config(out / "config.yaml").judge.kwargs == {"scale": 5.0}
