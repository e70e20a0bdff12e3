"""The score stage on hand-made judgments (no model): which response is chosen, which
rejected, with which win rate; the self-match setting; the marker after the data; and the
generation seeds of each iteration. Exact values, derived by hand in each test."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from rspo.config import load_config
from rspo.distributed import DistContext
from rspo.selfplay.loop import SelfPlayRun
from rspo.selfplay.rundir import RunDir
from rspo.utils.io import append_jsonl, atomic_write_json

# K = 3, prompt 0: response 2 beats both others, response 0 loses to both (P[k, j] = P(k ≻ j)).
P0 = [[0.5, 0.25, 0.0], [0.75, 0.5, 0.5], [1.0, 0.5, 0.5]]
# prompt 1: the judge ties everything
P1 = [[0.5, 0.5, 0.5]] * 3


def _run(tmp_path, **objective) -> SelfPlayRun:
    overrides = [f"--objective.{k}={v}" for k, v in objective.items()]
    cfg = load_config(None, overrides, preset="gym")  # the gym preset: samples all, η = 10
    cfg.run.output = str(tmp_path)
    sp = object.__new__(SelfPlayRun)  # no model: the stage reads records, logp recorded
    sp.cfg, sp.rd, sp.dist = cfg, RunDir(tmp_path), DistContext()
    sp.models, sp.device = SimpleNamespace(reference=None), "cpu"
    sp.ops = SimpleNamespace(logprobs=None)  # no forward: log π_t is recorded, π_ref = π_1
    sp.loss_fn = SimpleNamespace(needs_ref_samples=False)
    sp.train_prompts = SimpleNamespace(ids=[[1, 2], [3]])
    d = sp.rd.iter_dir(1)
    d.mkdir(parents=True)
    gens = [
        {
            "prompt_index": i,
            "responses": [{"ids": [10 * i + k], "logp": -1.0 - k} for k in range(3)],
        }
        for i in range(2)
    ]
    append_jsonl(d / "generations.jsonl", gens)
    append_jsonl(
        d / "judgments.jsonl", [{"prompt_index": 0, "P": P0}, {"prompt_index": 1, "P": P1}]
    )
    return sp


def _dataset(sp: SelfPlayRun) -> dict:
    sp.stage_score(1)
    return json.loads((sp.rd.iter_dir(1) / "dataset.json").read_text())


@pytest.mark.parametrize("loss_type", ["sppo_hard", "inpo"])
def test_pair_losses_choose_the_judges_best_and_reject_its_worst(tmp_path, loss_type):
    extra = {"tau": 0.1} if loss_type == "inpo" else {}
    sp = _run(tmp_path, loss_type=loss_type, **extra)
    data = _dataset(sp)
    # self-match: p̂_k = (Σ_{j≠k} P[k, j] + ½) / K -> (0.25 + .5)/3, (1.25 + .5)/3, (1.5 + .5)/3
    rows = [(e["prompt_index"], e["k"], e["label"], e["win_rate"]) for e in data["examples"]]
    assert rows == [(0, 2, 1, pytest.approx(2 / 3)), (0, 0, -1, pytest.approx(0.25))]
    assert [e["response_ids"] for e in data["examples"]] == [[2], [0]]
    assert [e["logp_t"] for e in data["examples"]] == [-3.0, -1.0]  # the recorded ones
    assert [e["logp_ref"] for e in data["examples"]] == [-3.0, -1.0]  # π_ref = π_1
    info = json.loads((sp.rd.iter_dir(1) / "score.done").read_text())
    assert (info["examples"], info["ref_examples"], info["tied_prompts"]) == (2, 0, 1)
    assert sp.models.reference == sp.cfg.model.path


@pytest.mark.parametrize(
    "self_match,want", [(True, [0.25, 1.75 / 3, 2 / 3]), (False, [0.125, 0.625, 0.75])]
)
def test_include_self_match_false_is_honoured(tmp_path, self_match, want):
    sp = _run(tmp_path)
    sp.cfg.judge.include_self_match = self_match
    data = _dataset(sp)
    # without the self-match: p̂_k = Σ_{j≠k} P[k, j] / (K − 1); every sample of both prompts
    got = [(e["prompt_index"], e["k"], e["label"], e["win_rate"]) for e in data["examples"]]
    tie = 0.5
    assert got == [(0, k, 0, pytest.approx(w)) for k, w in enumerate(want)] + [
        (1, k, 0, pytest.approx(tie)) for k in range(3)
    ]
    assert json.loads((sp.rd.iter_dir(1) / "score.done").read_text())["tied_prompts"] == 0


def test_best_worst_samples_keep_tied_prompts_for_the_square_loss(tmp_path):
    sp = _run(tmp_path, samples="best_worst")
    data = _dataset(sp)
    got = [(e["prompt_index"], e["k"], e["label"]) for e in data["examples"]]
    assert got == [(0, 2, 1), (0, 0, -1), (1, 0, 1), (1, 1, -1)]  # all tied: two distinct
    assert data["coef"] == sp.cfg.objective.coef and data["measured"] is None


def test_the_score_marker_is_written_after_its_data(tmp_path, monkeypatch):
    from rspo.selfplay import loop as loop_mod

    sp = _run(tmp_path)

    def killed(*a, **k):
        raise KeyboardInterrupt  # a kill while writing dataset.json

    monkeypatch.setattr(loop_mod, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        sp.stage_score(1)
    assert not sp.rd.done(1, "score")


def _fake_sampler(monkeypatch) -> list[dict]:
    """Replace the generate stage's sampler with one that records each call's arguments and
    returns empty records for its prompts; the list of calls is returned."""
    calls: list[dict] = []

    def sample_records(
        ops, path, prompt_ids, idx, k, seed_parts, params, unit=None, logprobs=False
    ):
        calls.append(
            {"ops": ops, "prompt_ids": prompt_ids, "params": params, "path": path, "idx": idx,
             "k": k, "seed_parts": seed_parts, "unit": unit, "logprobs": logprobs}
        )  # fmt: skip
        return [{"prompt_index": i, "responses": []} for i in idx]

    monkeypatch.setattr("rspo.selfplay.loop.sample_records", sample_records)
    return calls


def test_generation_seeds_differ_between_iterations(tmp_path, monkeypatch):
    sp = _run(tmp_path)
    calls = _fake_sampler(monkeypatch)
    sp.cfg.run.seed = 7
    sp.cfg.model.path = "m"
    sp.cfg.generation.logprobs = "off"
    for t in (2, 3):
        sp.rd.checkpoint(t - 1).mkdir(parents=True)
        sp.stage_generate(t)
        assert sp.rd.done(t, "generate")
    assert [c["seed_parts"] for c in calls] == [(7, "gen", 2), (7, "gen", 3)]


def test_reference_samples_are_scored_for_the_prompts_of_the_dataset(tmp_path):
    sp = _run(tmp_path, loss_type="sppo_hard")  # prompt 1 is tied: only prompt 0 is kept
    sp.loss_fn = SimpleNamespace(needs_ref_samples=True)
    asked = []

    def ref_samples(t, idx):
        asked.append((t, idx))
        return {i: [[100 + i], [200 + i]] for i in idx}

    sp._ref_samples = ref_samples
    sp.ops = SimpleNamespace(logprobs=lambda path, prompts, resps: [-float(r[0]) for r in resps])
    data = _dataset(sp)
    assert asked == [(1, [0])]
    assert data["ref_examples"] == [
        {"prompt_index": 0, "response_ids": [100], "logp_ref": -100.0},
        {"prompt_index": 0, "response_ids": [200], "logp_ref": -200.0},
    ]


# ----------------------------------------------------------------- estimate.py, exact
def test_win_rates_count_the_self_match_by_default_and_check_the_shape():
    from rspo.selfplay.estimate import win_rates

    # P0 by hand: off-diagonal row sums 0.25, 1.25, 1.5; with the self-match (+½)/3
    assert win_rates(P0) == pytest.approx([0.75 / 3, 1.75 / 3, 2.0 / 3], abs=1e-15)
    assert win_rates([[0.5, 0.9], [0.1, 0.5]], include_self_match=False) == pytest.approx(
        [0.9, 0.1], abs=1e-15
    )
    for bad, shape in (([[0.5]], "(1, 1)"), ([[0.5, 0.5]], "(1, 2)"), ([0.5, 0.5], "(2,)")):
        with pytest.raises(ValueError) as e:
            win_rates(bad)
        assert str(e.value) == f"preference matrix must be K×K with K >= 2, got shape {shape}"


def test_best_worst_returns_two_distinct_samples_whatever_the_estimates():
    from rspo.selfplay.estimate import best_worst

    assert best_worst([0.2, 0.9, 0.1, 0.9]) == (1, 2)  # first of the tied best
    assert best_worst([0.5, 0.5, 0.5]) == (0, 1)
    # argmax = argmin at a NaN that is not the first sample: still two distinct samples
    b, w = best_worst([0.3, float("nan"), 0.3])
    assert b == 1 and w == 0


# ----------------------------------------------------------------- the score stage
def _judged(sp, P_by_prompt):
    path = sp.rd.iter_dir(1) / "judgments.jsonl"
    path.unlink()
    append_jsonl(path, [{"prompt_index": i, "P": P} for i, P in enumerate(P_by_prompt)])


@pytest.mark.parametrize("loss_type", ["sppo_hard", "inpo"])
def test_a_tied_prompt_skips_only_itself(tmp_path, loss_type):
    """Prompt 0 tied, prompt 1 decided: the pair of prompt 1 is kept."""
    extra = {"tau": 0.1} if loss_type == "inpo" else {}
    sp = _run(tmp_path, loss_type=loss_type, **extra)
    _judged(sp, [P1, P0])
    data = _dataset(sp)
    rows = [(e["prompt_index"], e["k"], e["label"]) for e in data["examples"]]
    assert rows == [(1, 2, 1), (1, 0, -1)]
    info = json.loads((sp.rd.iter_dir(1) / "score.done").read_text())
    assert (info["examples"], info["tied_prompts"]) == (2, 1)


def test_log_probs_are_computed_under_the_policy_and_the_reference_when_not_recorded(tmp_path):
    """Iteration 2: π_2 is iteration 1's checkpoint, π_ref the initial model; logp was not
    recorded while sampling, so both are computed, each under its own model."""
    sp = _run(tmp_path, samples="best_worst")
    sp.cfg.model.path = "init"
    d1, d2 = sp.rd.iter_dir(1), sp.rd.iter_dir(2)
    d2.mkdir()
    for name in ("generations.jsonl", "judgments.jsonl"):
        recs = [json.loads(x) for x in (d1 / name).read_text().splitlines()]
        for r in recs:
            for resp in r.get("responses", []):
                resp.pop("logp")
        append_jsonl(d2 / name, recs)
    calls = []

    def logprobs(path, prompts, resps):
        calls.append((path, prompts, resps))
        base = -100.0 if path == "init" else -10.0
        return [base - r[0] for r in resps]

    sp.ops = SimpleNamespace(logprobs=logprobs)  # the log-prob forwards the score stage calls
    sp.stage_score(2)
    data = json.loads((d2 / "dataset.json").read_text())
    policy = str(sp.rd.checkpoint(1))
    # best/worst: prompt 0 -> (2, 0); prompt 1 tied -> (0, 1); response ids 10*i + k
    want_ids = [[2], [0], [10], [11]]
    assert calls == [
        (policy, [[1, 2], [1, 2], [3], [3]], want_ids),
        ("init", [[1, 2], [1, 2], [3], [3]], want_ids),
    ]
    assert [(e["logp_t"], e["logp_ref"]) for e in data["examples"]] == [
        (-10.0 - i[0], -100.0 - i[0]) for i in want_ids
    ]
    assert sp.models.reference == "init"


# ----------------------------------------------------------------- the generate stage
def test_generation_sends_one_chunk_per_rank_and_asks_for_log_probs(tmp_path, monkeypatch):
    """5 prompts, K = 2, batch 2 -> chunks of one prompt; 2 ranks -> each call holds two
    chunks (one per rank) with unit = chunk × K sequences; generation.logprobs 'on' (HF)
    -> the records carry log π_t."""
    sp = _run(tmp_path)
    sp.train_prompts = SimpleNamespace(ids=[[i] for i in range(5)])
    sp.cfg.generation.num_samples, sp.cfg.generation.batch_size = 2, 2
    sp.cfg.generation.backend, sp.cfg.generation.logprobs = "hf", "on"
    sp.cfg.model.path = "m"
    calls = _fake_sampler(monkeypatch)
    one = lambda f, *a, **k: f(*a, **k)  # noqa: E731 - rank 0's view of the collectives
    sp.dist = SimpleNamespace(world_size=2, from_main=one, main_only=one)
    sp.rd.iter_dir(2).mkdir()
    sp.rd.checkpoint(1).mkdir()
    sp.stage_generate(2)
    path = str(sp.rd.checkpoint(1))
    assert [(c["path"], c["idx"], c["k"], c["unit"], c["logprobs"]) for c in calls] == [
        (path, [0, 1], 2, 2, True),
        (path, [2, 3], 2, 2, True),
        (path, [4], 2, 2, True),
    ]
    got = [json.loads(x)["prompt_index"] for x in
           (sp.rd.iter_dir(2) / "generations.jsonl").read_text().splitlines()]  # fmt: skip
    assert got == [0, 1, 2, 3, 4] and sp.rd.done(2, "generate")


def test_mpo_scores_against_the_magnet_checkpoint(tmp_path):
    """MPO with magnet_refresh = 2: in iteration 3 π_ref is the checkpoint of iteration 2
    (anchor ((3 − 1) // 2)·2 = 2), which is also π_3: log π_ref = the recorded log π_t."""
    sp = _run(tmp_path, loss_type="sppo_hard", magnet_refresh=2)
    _iteration_like_the_first(sp, 3)
    sp.stage_score(3)
    assert sp.models.reference == str(sp.rd.checkpoint(2))
    data = json.loads((sp.rd.iter_dir(3) / "dataset.json").read_text())
    assert [e["logp_ref"] for e in data["examples"]] == [-3.0, -1.0]


def test_generation_records_logprobs_in_float32_on_a_cpu_device(tmp_path, monkeypatch):
    """generation.logprobs auto, HF backend, model.dtype auto: float32 on the CPU, so the
    samples' log π_t are recorded; a bfloat16 model does not record them."""
    import torch

    sp = _run(tmp_path)
    sp.device = torch.device("cpu")
    calls = _fake_sampler(monkeypatch)
    sp.cfg.model.path = "m"
    sp.cfg.generation.backend, sp.cfg.generation.logprobs = "hf", "auto"
    for t, dtype in ((2, "auto"), (3, "bfloat16")):
        sp.cfg.model.dtype = dtype
        sp.rd.checkpoint(t - 1).mkdir(parents=True)
        sp.stage_generate(t)
    assert [c["logprobs"] for c in calls] == [True, False]


def test_generation_fault_points_are_named_for_the_generate_stage(tmp_path, monkeypatch):
    """After each appended chunk the generate stage offers a fault point named "generate"
    with the prompts written so far (RSPO_FAULT=generate:N kills the run there)."""
    from rspo.selfplay import resume

    sp = _run(tmp_path)
    points = []
    monkeypatch.setattr(resume, "fault_point", lambda stage, n: points.append((stage, n)))
    _fake_sampler(monkeypatch)
    sp.cfg.model.path = "m"
    sp.cfg.generation.num_samples, sp.cfg.generation.batch_size = 3, 3  # one prompt a chunk
    sp.cfg.generation.logprobs = "off"
    sp.rd.checkpoint(1).mkdir()
    sp.rd.iter_dir(2).mkdir()
    sp.stage_generate(2)
    assert points == [("generate", 1), ("generate", 2)]


def _iteration_like_the_first(sp, t):
    """Iteration t's generations and judgments: iteration 1's (same prompts, same verdicts)."""
    src, dst = sp.rd.iter_dir(1), sp.rd.iter_dir(t)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("generations.jsonl", "judgments.jsonl"):
        (dst / name).write_text((src / name).read_text())


def test_the_kpi_rule_sets_the_coefficient_of_the_dataset(tmp_path):
    """objective.adaptive kpi: λ_3 = λ_2 · kpi_step^(−clip(ΔKPI / kpi_scale, −1, 1)) with the
    KPI of iterations 1 and 2 (win rate 0.55 -> 0.525: −0.025, half the scale 0.05), so
    λ_3 = 1.0 · 2^0.5; iteration 1's λ is objective.coef, its measurement none."""
    sp = _run(tmp_path, adaptive="kpi", kpi="win_rate", regularizer="forward_kl", coef=1.0)
    sp.log = lambda m: None
    sp.ops = SimpleNamespace(logprobs=lambda path, prompts, resps: [-3.0] * len(resps))
    first = _dataset(sp)
    assert (first["coef"], first["measured"]) == (1.0, None)
    for t, kpi in ((1, 0.55), (2, 0.525)):
        atomic_write_json(sp.rd.iter_dir(t) / "metrics.json", {"iteration": t, "win_rate": kpi})
    _iteration_like_the_first(sp, 2)
    atomic_write_json(sp.rd.iter_dir(2) / "dataset.json", {"coef": 1.0})
    _iteration_like_the_first(sp, 3)
    sp.stage_score(3)
    data = json.loads((sp.rd.iter_dir(3) / "dataset.json").read_text())
    assert data["coef"] == pytest.approx(2**0.5, rel=1e-15) and data["measured"] == 0.525


def test_the_kl_controller_moves_the_previous_iterations_coefficient(tmp_path):
    """objective.adaptive kl: λ_2 = λ_1 · exp(clip(KL / target − 1, −1, 1)), λ_1 read from
    iteration 1's dataset.json (0.8, not objective.coef). Every sample is a row (gym: samples
    all); log π_t − log π_ref = (−1 − k) − (−3) = 2, 1, 0 per prompt: KL = 1; target 0.8:
    exp(0.25)."""
    sp = _run(tmp_path, adaptive="kl", adaptive_target=0.8, regularizer="reverse_kl", coef=0.2)
    sp.ops = SimpleNamespace(logprobs=lambda path, prompts, resps: [-3.0] * len(resps))
    atomic_write_json(sp.rd.iter_dir(1) / "dataset.json", {"coef": 0.8})
    _iteration_like_the_first(sp, 2)
    sp.stage_score(2)
    data = json.loads((sp.rd.iter_dir(2) / "dataset.json").read_text())
    assert data["measured"] == 1.0
    assert data["coef"] == pytest.approx(0.8 * math.exp(0.25), rel=1e-14)


def test_generation_samples_the_iterations_prompts_from_its_policy(tmp_path, monkeypatch):
    """data.prompts_per_iteration 2 of 5 prompts: iteration 1 samples prompts 0, 1 from the
    initial model (model.path), iteration 2 prompts 2, 3 from iteration 1's checkpoint; every
    call gets the run's model ops, the prompt ids and generation.* as sampling parameters."""
    from rspo.selfplay.generate import sampling_params

    sp = _run(tmp_path)
    sp.train_prompts = SimpleNamespace(ids=[[i] for i in range(5)])
    sp.cfg.data.prompts_per_iteration = 2
    sp.cfg.generation.num_samples, sp.cfg.generation.batch_size = 2, 4  # 2 prompts a call
    sp.cfg.generation.max_new_tokens, sp.cfg.generation.top_k = 7, 3
    sp.cfg.generation.logprobs = "off"
    sp.cfg.model.path = "initial"
    calls = _fake_sampler(monkeypatch)
    for t in (1, 2):
        sp.rd.iter_dir(t).mkdir(exist_ok=True)
        (sp.rd.iter_dir(t) / "generations.jsonl").unlink(missing_ok=True)
        sp.rd.checkpoint(t).mkdir(parents=True)
        sp.stage_generate(t)
    assert [(c["path"], c["idx"]) for c in calls] == [
        ("initial", [0, 1]),
        (str(sp.rd.checkpoint(1)), [2, 3]),
    ]
    for c in calls:
        assert c["ops"] is sp.ops and c["prompt_ids"] is sp.train_prompts.ids
        assert c["params"] == sampling_params(sp.cfg)
        assert (c["params"].max_new_tokens, c["params"].top_k) == (7, 3)


def test_the_score_stage_reads_only_the_iterations_prompts(tmp_path):
    """data.prompts_per_iteration 1 of 2: iteration 2 trains on prompt 1 only (the judge
    ties its samples: win rate ½ each); a record of another prompt is an error."""
    sp = _run(tmp_path)
    sp.cfg.data.prompts_per_iteration = 1
    sp.ops = SimpleNamespace(logprobs=lambda path, prompts, resps: [-3.0] * len(resps))
    _iteration_like_the_first(sp, 2)
    for name in ("generations.jsonl", "judgments.jsonl"):  # iteration 2's prompt: 1
        f = sp.rd.iter_dir(2) / name
        f.write_text("".join(x + "\n" for x in f.read_text().splitlines()
                             if json.loads(x)["prompt_index"] == 1))  # fmt: skip
    sp.stage_score(2)
    data = json.loads((sp.rd.iter_dir(2) / "dataset.json").read_text())
    got = [(e["prompt_index"], e["k"], e["win_rate"]) for e in data["examples"]]
    assert got == [(1, 0, 0.5), (1, 1, 0.5), (1, 2, 0.5)]


def test_the_kl_controller_starts_from_objective_coef_in_iteration_1(tmp_path):
    """Iteration 1 has no previous dataset: λ_0 = objective.coef (0.2). π_ref = π_1, so the
    measured KL is 0 and λ_1 = 0.2 · exp(clip(0 / 0.8 − 1, −1, 1)) = 0.2 / e."""
    sp = _run(tmp_path, adaptive="kl", adaptive_target=0.8, regularizer="reverse_kl", coef=0.2)
    data = _dataset(sp)
    assert data["measured"] == 0.0
    assert data["coef"] == pytest.approx(0.2 * math.exp(-1.0), rel=1e-14)


def test_the_score_stage_offers_its_fault_point_before_writing_its_data(tmp_path, monkeypatch):
    """RSPO_FAULT=score kills the run at the score stage's one fault point, ("score", 1),
    which comes before dataset.json is written (the resume tests kill there)."""
    from rspo.selfplay import loop as loop_mod

    sp = _run(tmp_path)
    points = []
    data = sp.rd.iter_dir(1) / "dataset.json"
    monkeypatch.setattr(
        loop_mod, "fault_point", lambda stage, n: points.append((stage, n, data.exists()))
    )
    sp.stage_score(1)
    assert points == [("score", 1, False)] and data.exists()


def test_win_rates_are_computed_in_float64_whatever_the_judges_dtype():
    """A float32 matrix (a reward model's verdicts) is summed in float64: the estimates are
    those of the same values as doubles, not float32 sums."""
    import numpy as np

    from rspo.selfplay.estimate import win_rates

    P = np.array([[0.5, 0.1, 0.7], [0.9, 0.5, 0.3], [0.3, 0.7, 0.5]], dtype=np.float32)
    M = P.astype(np.float64)
    want = [(M[k].sum() - M[k, k] + 0.5) / 3 for k in range(3)]
    assert win_rates(P) == want
    assert win_rates(P, include_self_match=False) == [
        (M[k].sum() - M[k, k]) / 2 for k in range(3)
    ]
