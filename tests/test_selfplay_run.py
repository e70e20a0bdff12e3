"""End-to-end self-play on tiny local models: improvement, run directory, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rspo.config import ConfigError, load_config
from rspo.selfplay.loop import run_selfplay

from fixtures_lm import make_pipeline_env, make_tiny_model_dir

TESTS = Path(__file__).parent


def _cfg(tmp: Path, model: Path, out: str, **extra) -> list[str]:
    ov = {
        "preset": "gym",  # the gym's small-model values under the settings below
        "model.path": str(model),
        "data.prompts": str(tmp / "train.jsonl"),
        "data.eval_prompts": str(tmp / "eval.jsonl"),
        "data.num_prompts": 12,
        "data.num_eval_prompts": 12,
        "generation.num_samples": 4,
        "generation.max_new_tokens": 12,
        "judge.name": "python",
        "judge.kwargs": "{fn: 'fixtures_lm:lowercase_judge'}",
        "objective.eta": 30.0,
        "objective.regularizer": "reverse_kl",
        "objective.coef": 0.1,
        "training.lr": 0.01,
        "training.epochs": 2,
        "training.batch_size": 16,
        "training.micro_batch_size": 8,
        "training.save_steps": 2,
        "evaluation.judge": "python",
        "evaluation.judge_kwargs": "{fn: 'fixtures_lm:lowercase_judge'}",
        "evaluation.accuracy_fn": "fixtures_lm:lowercase_correct",
        "evaluation.temperature": 1.0,
        "evaluation.max_new_tokens": 12,
        "evaluation.diversity_samples": 3,
        "evaluation.n_boot": 200,
        "generation.batch_size": 8,
        "judge.batch_size": 6,
        "run.iterations": 2,
        "run.output": str(tmp / out),
    }
    ov.update(extra)
    args = []
    for k, v in ov.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    return make_pipeline_env(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def reference_run(setup):
    tmp, model = setup
    cfg = load_config(None, _cfg(tmp, model, "ref_run"))
    rows = run_selfplay(cfg, log=lambda m: None)
    return cfg, rows


def test_two_iterations_improve_the_judged_metric(reference_run):
    cfg, rows = reference_run
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[0]["win_rate"] == pytest.approx(0.5, abs=0.15)
    assert rows[-1]["win_rate"] > 0.6  # the policy learned what the judge prefers
    assert rows[-1]["win_rate_ci"][0] > 0.5


def test_run_directory_layout(reference_run):
    cfg, _ = reference_run
    root = Path(cfg.run.output)
    assert (root / "config.yaml").exists() and (root / "run.json").exists()
    for name in (
        "generations.jsonl",
        "judgments.jsonl",
        "dataset.json",
        "train_log.jsonl",
        "metrics.json",
        "model_outputs.json",
    ):
        assert (root / "iter_001" / name).exists(), name
    ck = root / "iter_002" / "checkpoint"
    assert list(ck.glob("*.safetensors")) and (ck / "tokenizer.json").exists()
    assert not list(ck.glob("*.bin"))
    gens = [
        json.loads(x) for x in (root / "iter_001" / "generations.jsonl").read_text().splitlines()
    ]
    assert len(gens) == 12 and all(len(g["responses"]) == 4 for g in gens)
    lines = (root / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_overoptimization_metrics_of_every_evaluated_iteration(reference_run):
    """Iteration 0 (π = π_ref): kl_ref exactly 0 and a proxy win rate of exactly ½ (the same
    seeded samples); later iterations: kl_ref is the mean stored log-ratio, the proxy (here
    the same judge as gold) equals the gold win rate, annotations.json reproduces it, and
    the run draws its frontier plot."""
    cfg, rows = reference_run
    root = Path(cfg.run.output)
    assert rows[0]["kl_ref"] == 0.0 and rows[0]["kl_ref_ci"] == [0.0, 0.0]
    assert rows[0]["kl_ref_per_token"] == 0.0 and rows[0]["proxy_win_rate"] == 0.5
    assert not (root / "iter_000" / "kl_logprobs.json").exists()  # no forward needed
    for r in rows:
        t = r["iteration"]
        assert r["proxy_win_rate"] == pytest.approx(r["win_rate"], abs=1e-12)
        ann = json.loads((root / f"iter_{t:03d}" / "annotations.json").read_text())
        assert len(ann) == 12
        assert sum(a["preference"] - 1 for a in ann) / 12 == pytest.approx(r["win_rate"], abs=1e-12)
    for r in rows[1:]:
        lp = json.loads((root / f"iter_{r['iteration']:03d}" / "kl_logprobs.json").read_text())
        d = [a - b for a, b in zip(lp["logp"], lp["logp_ref"])]
        assert r["kl_ref"] == pytest.approx(sum(d) / len(d), rel=1e-12)
        assert r["kl_ref"] > 0 and r["kl_ref_ci"][0] <= r["kl_ref"] <= r["kl_ref_ci"][1]
    assert rows[2]["kl_ref"] > rows[1]["kl_ref"]  # the policy moves on from π_ref
    assert (root / "plots" / "frontier.png").stat().st_size > 0


def test_rerun_is_a_noop_and_changed_config_is_refused(setup, reference_run):
    tmp, model = setup
    cfg, rows = reference_run
    again = run_selfplay(cfg, log=lambda m: None)
    assert again == rows
    changed = load_config(None, _cfg(tmp, model, "ref_run", **{"objective.coef": 0.2}))
    with pytest.raises(ConfigError, match="objective.coef"):
        run_selfplay(changed, log=lambda m: None)


def test_a_prompt_file_edited_since_the_run_started_is_refused_on_resume(setup, tmp_path):
    """Records refer to prompts by position: resuming after the prompt file changed would
    pair old generations with new prompts. The run keeps prompts.jsonl and checks it."""
    import shutil

    tmp, model = setup
    shutil.copy(tmp / "train.jsonl", tmp_path / "train.jsonl")
    shutil.copy(tmp / "eval.jsonl", tmp_path / "eval.jsonl")
    over = {"data.prompts": str(tmp_path / "train.jsonl"), "run.iterations": 1}
    cfg = load_config(None, _cfg(tmp, model, str(tmp_path / "run"), **over))
    run_selfplay(cfg, log=lambda m: None)
    kept = [json.loads(x) for x in (tmp_path / "run" / "prompts.jsonl").read_text().splitlines()]
    assert [r["split"] for r in kept] == ["train"] * 12 + ["eval"] * 12
    assert kept[3]["text"] == "Say something #3:" and kept[3]["ids"]
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"prompt": "Something else"})
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    more = load_config(
        None, _cfg(tmp, model, str(tmp_path / "run"), **{**over, "run.iterations": 2})
    )
    with pytest.raises(ConfigError, match=r"data.prompts: train prompt 3 is not the one this run"):
        run_selfplay(more, log=lambda m: None)
    assert not (tmp_path / "run" / "iter_002").exists()


def test_a_run_made_before_a_config_key_existed_still_resumes(setup, reference_run, tmp_path):
    # a run directory written by an older rspo lacks keys added since (here: three of them);
    # missing keys count as their defaults, so the finished run is still recognised
    import shutil

    import yaml

    tmp, model = setup
    cfg, rows = reference_run
    old = tmp_path / "old_run"
    shutil.copytree(cfg.run.output, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["training"]["packing"], saved["generation"]["logprobs"]
    del saved["generation"]["hf_decode"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    again = load_config(None, _cfg(tmp, model, str(old)))
    assert run_selfplay(again, log=lambda m: None) == rows  # recognised as finished
    saved["training"]["packing"] = "off"  # but a stored non-default value still counts
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="training.packing"):
        run_selfplay(again, log=lambda m: None)


def _cli(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "rspo.cli", "train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault", ["generate:4", "judge:4", "score:1", "train:3", "evaluate_eval:1", "evaluate_kl:1"]
)
def test_sigkill_inside_a_stage_then_resume_gives_identical_numbers(setup, reference_run, fault):
    tmp, model = setup
    _, rows = reference_run
    out = f"fault_{fault.split(':')[0]}"
    args = _cfg(tmp, model, out)
    killed = _cli(args, {"RSPO_FAULT": fault})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _cli(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = [json.loads(x) for x in (tmp / out / "metrics.jsonl").read_text().splitlines()]
    assert got == rows
    gens = (tmp / out / "iter_001" / "generations.jsonl").read_text().splitlines()
    assert sorted(json.loads(g)["prompt_index"] for g in gens) == list(
        range(12)
    )  # none lost/duplicated


def test_forward_kl_nll_draws_reference_samples_from_ref_model(setup):
    """With π_ref ≠ π_0 the NLL estimator's π_ref samples are generated by π_ref, seeded."""
    tmp, model = setup
    ref = make_tiny_model_dir(tmp / "ref_model", seed=5)
    extra = {
        "model.ref_path": str(ref),
        "objective.regularizer": "forward_kl[nll]",
        "evaluation.enabled": "false",
        "run.iterations": 1,
    }
    cfg = load_config(None, _cfg(tmp, model, "nll_run", **extra))
    run_selfplay(cfg, log=lambda m: None)
    root = Path(cfg.run.output)
    recs = [json.loads(x) for x in (root / "ref_samples.jsonl").read_text().splitlines()]
    assert sorted(r["prompt_index"] for r in recs) == list(range(12))
    assert all(len(r["ids"]) == 4 for r in recs)
    data = json.loads((root / "iter_001" / "dataset.json").read_text())
    assert len(data["ref_examples"]) == 48
    gens = [
        json.loads(x) for x in (root / "iter_001" / "generations.jsonl").read_text().splitlines()
    ]
    first = {g["prompt_index"]: [r["ids"] for r in g["responses"]] for g in gens}
    assert any(first[r["prompt_index"]] != r["ids"] for r in recs)  # π_ref's own samples


def test_multi_sample_evaluation_pairs_sample_j_with_sample_j(setup):
    """evaluation.num_samples=k: k policy samples per prompt meet π_ref's k, bootstrap by prompt."""
    import math

    from rspo.selfplay.standalone import evaluate_model

    from fixtures_lm import lowercase_correct, n_lower

    tmp, model = setup
    other = make_tiny_model_dir(tmp / "other_model", seed=7)
    extra = {"evaluation.num_samples": 3, "evaluation.diversity_samples": 3}
    sub = {**extra, "evaluation.subset_fn": "fixtures_lm:parity_subset"}
    cfg = load_config(None, _cfg(tmp, model, "eval_k3", **sub))
    m = evaluate_model(cfg, str(other))
    out = Path(cfg.run.output) / "eval"
    read = lambda p: [json.loads(x)["responses"] for x in p.read_text().splitlines()]  # noqa: E731
    pol, base = read(out / "eval_outputs.jsonl"), read(out / "eval_baseline.jsonl")
    assert [len(r) for r in pol] == [3] * 12 and [len(r) for r in base] == [3] * 12
    assert not (out / "eval_samples.jsonl").exists()  # the k samples double as diversity samples
    pairs = [(a["text"], b["text"]) for ra, rb in zip(pol, base) for a, b in zip(ra, rb)]
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    want = sum(sig(n_lower(a) - n_lower(b)) for a, b in pairs) / 36
    assert m["win_rate"] == pytest.approx(want, abs=1e-9)
    assert m["n_prompts"] == 12
    prompts = [json.loads(x)["prompt"] for x in (tmp / "eval.jsonl").read_text().splitlines()]
    for lab in ("odd", "even"):
        idx = [i for i, p in enumerate(prompts) if (len(p) % 2 == 1) == (lab == "odd")]
        got = [sig(n_lower(a["text"]) - n_lower(b["text"])) for i in idx
               for a, b in zip(pol[i], base[i])]  # fmt: skip
        assert m[f"win_rate_{lab}"] == pytest.approx(sum(got) / len(got), abs=1e-9)
    assert m["accuracy"] == pytest.approx(sum(lowercase_correct("", a) for a, _ in pairs) / 36)
    # the policy against itself: identical seeded samples, every pair a tie
    same = evaluate_model(load_config(None, _cfg(tmp, model, "eval_self", **extra)), str(model))
    assert same["win_rate"] == 0.5 and same["win_rate_ci"] == [0.5, 0.5]


def test_rspo_eval_of_another_model_in_the_same_directory_does_not_reuse_outputs(setup):
    """`rspo eval` twice with the default output dir: the second model's metrics are its
    own (equal to a fresh directory's), π_ref's baseline is kept, and a changed config
    replaces the baseline too."""
    from rspo.selfplay.standalone import evaluate_model

    tmp, model = setup
    a = make_tiny_model_dir(tmp / "eval_a", seed=11)
    b = make_tiny_model_dir(tmp / "eval_b", seed=12)
    cfg = load_config(None, _cfg(tmp, model, "eval_twice"))
    logs: list[str] = []
    evaluate_model(cfg, str(a))
    out = Path(cfg.run.output) / "eval"
    base = (out / "eval_baseline.jsonl").read_bytes()
    of_a = (out / "eval_outputs.jsonl").read_bytes()
    second = evaluate_model(cfg, str(b))
    alone = evaluate_model(cfg, str(b), str(tmp / "eval_b_alone"))
    of_b = (out / "eval_outputs.jsonl").read_bytes()
    assert of_b == (tmp / "eval_b_alone" / "eval_outputs.jsonl").read_bytes() != of_a
    assert second == {**alone, "model": str(b)}
    assert (out / "eval_baseline.jsonl").read_bytes() == base
    again = evaluate_model(cfg, str(b))  # same model and config: read back, same numbers
    assert again["win_rate"] == second["win_rate"]
    changed = load_config(None, _cfg(tmp, model, "eval_twice", **{"evaluation.max_new_tokens": 4}))
    from rspo.selfplay.standalone import _claim

    _claim(out, str(b), changed, logs.append)
    assert not (out / "eval_baseline.jsonl").exists() and not (out / "metrics.json").exists()
    assert logs and "removed" in logs[0]


def test_rspo_eval_of_a_model_replaced_at_the_same_path_is_redone(setup, tmp_path):
    """A checkpoint retrained into the same directory is another model: its outputs are not
    read back from the first one's evaluation."""
    import shutil

    from rspo.selfplay.standalone import evaluate_model

    tmp, model = setup
    cfg = load_config(None, _cfg(tmp, model, str(tmp_path / "ev")))
    path = tmp_path / "policy"
    make_tiny_model_dir(path, seed=21)
    out = tmp_path / "ev" / "eval" / "eval_outputs.jsonl"
    evaluate_model(cfg, str(path))
    first = out.read_bytes()
    shutil.rmtree(path)
    make_tiny_model_dir(path, seed=22)  # retrained: same path, other weights
    evaluate_model(cfg, str(path))
    evaluate_model(cfg, str(path), str(tmp_path / "ev_fresh"))
    fresh = (tmp_path / "ev_fresh" / "eval_outputs.jsonl").read_bytes()
    assert out.read_bytes() == fresh != first


def test_rspo_eval_refuses_to_write_into_a_training_run(reference_run):
    from rspo.selfplay.standalone import evaluate_model

    cfg, _ = reference_run
    run_dir = Path(cfg.run.output)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"holds a training run \(iter_00\d\).*another --out"):
        evaluate_model(cfg, str(run_dir / "iter_001" / "checkpoint"), str(run_dir))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_an_mpo_magnet_refresh_draws_forward_kl_samples_from_the_new_magnet(setup, tmp_path):
    """objective.magnet_refresh=1 with forward_kl[nll]: iteration 2's π_ref is π_2's
    predecessor checkpoint, so its NLL samples come from that checkpoint, kept apart from
    π_0's; each iteration trains on its own reference's samples."""
    tmp, model = setup
    over = {
        "objective.regularizer": "forward_kl[nll]",
        "objective.magnet_refresh": 1,
        "run.iterations": 2,
        "evaluation.enabled": False,
    }
    cfg = load_config(None, _cfg(tmp, model, str(tmp_path / "mpo"), **over))
    run_selfplay(cfg, log=lambda m: None)
    root = tmp_path / "mpo"
    first = {
        r["prompt_index"]: r["ids"] for r in map(json.loads, (root / "ref_samples.jsonl").open())
    }
    second = {
        r["prompt_index"]: r["ids"]
        for r in map(json.loads, (root / "ref_samples_001.jsonl").open())
    }
    assert first.keys() == second.keys() and first != second
    for t, samples in ((1, first), (2, second)):
        refs = json.loads((root / f"iter_{t:03d}" / "dataset.json").read_text())["ref_examples"]
        assert refs and all(r["response_ids"] in samples[r["prompt_index"]] for r in refs)


def test_judge_caches_can_live_outside_the_run_directory(setup, tmp_path):
    """run.cache_dir (local disk on a multi-machine run): the caches go there, the records
    are the same, and it may change when resuming."""
    tmp, model = setup
    extra = {"run.iterations": 1}
    a = load_config(None, _cfg(tmp, model, str(tmp_path / "a"), **extra))
    run_selfplay(a, log=lambda m: None)
    local = tmp_path / "local_cache"
    b_args = _cfg(tmp, model, str(tmp_path / "b"), **extra, **{"run.cache_dir": str(local)})
    run_selfplay(load_config(None, b_args), log=lambda m: None)
    assert sorted(p.name for p in local.glob("*.sqlite")) == [
        "eval_judge_cache.sqlite",
        "judge_cache.sqlite",
    ]
    assert not list((tmp_path / "b").glob("*.sqlite"))
    for f in ("metrics.jsonl", "iter_001/judgments.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    moved = _cfg(tmp, model, str(tmp_path / "b"), **extra, **{"run.cache_dir": str(tmp_path / "c")})
    run_selfplay(load_config(None, moved), log=lambda m: None)  # resumable with another dir


def test_lowering_iterations_below_an_evaluated_one_is_refused_and_loses_nothing(
    reference_run, tmp_path
):
    import shutil

    cfg, rows = reference_run
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    out = tmp_path / "fewer"
    shutil.copytree(cfg.run.output, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    tmp = Path(cfg.data.prompts).parent
    fewer = load_config(None, _cfg(tmp, Path(cfg.model.path), str(out), **{"run.iterations": 1}))
    with pytest.raises(
        ConfigError,
        match=r"run\.iterations: 1, but .* already evaluated "
        r"iteration 2; lowering it would drop rows from metrics\.jsonl",
    ):
        run_selfplay(fewer, log=lambda m: None)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    same = load_config(None, _cfg(tmp, Path(cfg.model.path), str(out)))
    assert run_selfplay(same, log=lambda m: None) == rows  # as many as were run: a no-op


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"objective.regularizer": "forward_kl[nll]", "objective.coef": 0.1},  # needs π_ref samples
        {"objective.adaptive": "kl", "objective.adaptive_target": 0.1},  # nothing to measure
    ],
    ids=["plain", "ref_samples", "adaptive"],
)
def test_pair_losses_skip_prompts_whose_samples_the_judge_tied(setup, tmp_path, extra):
    """sppo_hard / inpo train chosen-vs-rejected pairs: with every p-hat tied there is no
    preference, so no pair (they trained on a made-up winner at loss 50 before); an iteration
    left with nothing to train keeps the policy, and an adaptive λ as it was."""
    tmp, model = setup
    over = {
        "objective.loss_type": "sppo_hard",
        "objective.samples": "best_worst",
        "judge.kwargs": "{fn: 'fixtures_lm:tie_judge'}",
        "run.iterations": 2,
        "evaluation.enabled": False,
        **extra,
    }
    cfg = load_config(None, _cfg(tmp, model, str(tmp_path / "tied"), **over))
    run_selfplay(cfg, log=lambda m: None)
    for t in (1, 2):
        it = tmp_path / "tied" / f"iter_{t:03d}"
        data = json.loads((it / "dataset.json").read_text())
        assert data["examples"] == [] and data["coef"] == cfg.objective.coef
        assert json.loads((it / "score.done").read_text())["tied_prompts"] == 12


@pytest.mark.parametrize(
    ("key", "fn", "pattern"),
    [
        ("evaluation.subset_fn", "fixtures_lm:ci_subset", r"labels \['ci'\] name metrics"),
        (
            "evaluation.accuracy_fn",
            "fixtures_lm:picky_correct",
            r"accuracy_fn fixtures_lm:picky_correct failed on eval prompt 3 .*KeyError",
        ),
    ],
)
def test_evaluation_functions_failing_are_named(setup, tmp_path, key, fn, pattern):
    tmp, model = setup
    over = {key: fn, "run.iterations": 1}
    cfg = load_config(None, _cfg(tmp, model, str(tmp_path / "evfn"), **over))
    with pytest.raises(ValueError, match=pattern):
        run_selfplay(cfg, log=lambda m: None)
