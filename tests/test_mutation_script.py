"""scripts/mutation.py's pure parts: mutant names to modules, seeded samples, --rerun."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts/mutation.py")
mutation = sys.modules["mutation_script"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutation)


def test_module_of_maps_files_functions_and_exclusions():
    assert mutation.module_of("rspo.game.equilibrium.x_best_response__mutmut_55") == "game"
    assert mutation.module_of("rspo.selfplay.loop.x_stage_score__mutmut_1") == "selfplay.score"
    assert mutation.module_of("rspo.selfplay.loop.x_stage_train__mutmut_1") is None
    assert mutation.module_of("rspo.evaluation.trackers.x_log__mutmut_2") is None
    assert mutation.module_of("rspo.selfplay.rundir.xǁRunDirǁinit__mutmut_3") == "rundir"
    with pytest.raises(ValueError, match="unexpected mutant name 'rspo.game'"):
        mutation.module_of("rspo.game")


def test_select_is_a_seeded_sample_per_module():
    names = [f"rspo.game.games.x_f__mutmut_{i}" for i in range(50)]
    names += [f"rspo.selfplay.rundir.x_g__mutmut_{i}" for i in range(3)]
    a = mutation.select(names, 10, seed=1)
    assert len(a["game"]) == 10 and a["game"] == sorted(a["game"])
    assert a["rundir"] == sorted(names[50:])  # fewer than asked: all of them
    assert a == mutation.select(names, 10, seed=1)
    assert a["game"] != mutation.select(names, 10, seed=2)["game"]
    assert mutation.select(names, 0, seed=1)["game"] == names[:50]


def test_rerun_takes_a_reports_survivors_of_the_chosen_modules(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "RESULTS", tmp_path)
    s1, s2 = "rspo.game.games.x_f__mutmut_2", "rspo.game.run.x_g__mutmut_9"
    report = {"modules": {
        "game": {"survivors": {s2: "survived", s1: "no tests"}},
        "rundir": {"survivors": {"rspo.selfplay.rundir.x_h__mutmut_1": "survived"}},
    }}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(report))
    chosen = {"game": [s1, "rspo.game.games.x_f__mutmut_3"], "judges": []}
    assert mutation.rerun_survivors("old", chosen, {s1, s2}) == {"game": [s1, s2]}
    with pytest.raises(SystemExit, match=r"1 survivors of old.json .*x_g__mutmut_9"):
        mutation.rerun_survivors("old", chosen, {s1})
    with pytest.raises(SystemExit, match="no report .*missing.json"):
        mutation.rerun_survivors("missing", chosen, {s1})


def test_function_of_names_functions_and_methods():
    assert mutation.function_of("rspo.game.equilibrium.x_best_response__mutmut_55") == (
        "best_response"
    )
    name = "rspo.evaluation.tensorboard.xǁMetricsLoggerǁlog__mutmut_4"
    assert mutation.function_of(name) == "MetricsLogger.log"


def test_rerun_runs_every_mutant_of_a_changed_function(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "RESULTS", tmp_path)
    old = [f"rspo.game.equilibrium.x_best_response__mutmut_{i}" for i in (3, 55)]
    kept = "rspo.game.games.x_f__mutmut_2"
    report = {"modules": {"game": {"survivors": {old[1]: "survived", kept: "survived"}}}}
    (tmp_path / "old.json").write_text(json.dumps(report))
    now = [f"rspo.game.equilibrium.x_best_response__mutmut_{i}" for i in (1, 2, 3)]
    chosen = {"game": [*now, kept, "rspo.game.games.x_f__mutmut_7"]}
    got = mutation.rerun_survivors("old", chosen, set(chosen["game"]), ("best_response",))
    assert got == {"game": sorted([*now, kept])}
    with pytest.raises(SystemExit, match="x_best_response__mutmut_55"):
        mutation.rerun_survivors("old", chosen, set(chosen["game"]))  # 55 no longer exists
    with pytest.raises(SystemExit):
        mutation.main(["--changed", "best_response"])  # needs --rerun


def test_results_in_mutants_gathers_every_meta_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mutants/rspo/game").mkdir(parents=True)
    (tmp_path / "mutants/rspo/game/a.py.meta").write_text(
        json.dumps({"exit_code_by_key": {"rspo.game.a.x_f__mutmut_1": 1}})
    )
    (tmp_path / "mutants/rspo/b.py.meta").write_text(
        json.dumps({"exit_code_by_key": {"rspo.b.x_g__mutmut_2": None}})
    )
    assert mutation._results_in_mutants() == {
        "rspo.game.a.x_f__mutmut_1": 1, "rspo.b.x_g__mutmut_2": None
    }  # fmt: skip
    with pytest.raises(SystemExit):
        mutation.main(["--resume", "--fresh"])  # resuming keeps mutants/, --fresh deletes it


def test_results_score_what_ran_and_count_what_did_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mutation, "EQUIVALENT", tmp_path / "equivalent.json")
    names = [f"rspo.game.games.x_f__mutmut_{i}" for i in range(5)]
    (tmp_path / "equivalent.json").write_text(json.dumps({names[2]: "same"}))
    (tmp_path / "mutants").mkdir()
    codes = dict(zip(names, [1, 0, 0, None, 1]))  # killed, survived, equivalent, not run, killed
    (tmp_path / "mutants/games.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    r = mutation.results({"game": names})["game"]
    assert (r["mutants"], r["equivalent"], r["killed"], r["not_run"]) == (4, 1, 2, 1)
    assert r["score"] == 2 / 3 and r["survivors"] == {names[1]: "survived"}
