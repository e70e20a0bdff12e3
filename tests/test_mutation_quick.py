"""Mutants that must die: the quick, CI form of the mutation score (issue 20).

Each entry is one small realistic bug: a one-place source patch (``old`` must occur exactly
once in ``file``) and the fast tests that must catch it. The patch is applied to a copy of
``rspo/`` made once per session; the mapped tests then run in a subprocess
(``pytest -x -q``, ``PYTHONPATH`` = the mutated copy, ``python -P`` so the checkout's own
``rspo`` is not on the path) and must FAIL. ``test_mapped_tests_pass_on_the_original``
runs every mapped test on the unmutated copy the same way, so a kill is never an import
or environment error. The full (sampled) mutmut run stays ``scripts/mutation.py``
(docs/testing.md); this is the regression guard that needs no mutmut.

When a mapped source line changes, update its entry (the test names the missing line).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.mutation


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MS = "tests/test_mutation_score.py::"
MT = "tests/test_mutation_trainer.py::"
MJ = "tests/test_mutation_judges.py::"
MUTANTS = [
    # --- named in issue 20
    Mutant(
        "score: chosen and rejected swapped",
        "rspo/selfplay/score.py",
        "return [(b, 1), (w, -1)]",
        "return [(w, 1), (b, -1)]",
        (MS + "test_pair_losses_choose_the_judges_best_and_reject_its_worst",),
    ),
    Mutant(
        "score: include_self_match ignored",
        "rspo/selfplay/score.py",
        'win_rates(j["P"], include_self_match)',
        'win_rates(j["P"])',
        (MS + "test_include_self_match_false_is_honoured",),
    ),
    Mutant(
        "judges: max_length dropped from the reward model's judge_id",
        "rspo/judges/reward_model.py",
        'f"max_length={self.max_length},chat=',
        'f"chat=',
        (MJ + "test_reward_model_id_exact", MJ + "test_every_setting_changes_the_judge_id"),
    ),
    Mutant(
        "score: .done marker written before dataset.json",
        "rspo/selfplay/loop.py",
        'fault_point("score", 1)',
        'self.rd.mark_done(t, "score", {}); fault_point("score", 1)',
        (MS + "test_the_score_marker_is_written_after_its_data",),
    ),
    Mutant(
        "objectives: Mixture.estimate ignores its weights",
        "rspo/objectives/mixture.py",
        "return sum(w * est for _, w, est in parts)",
        "return sum(est for _, w, est in parts)",
        ("tests/test_mutation_objectives.py::test_mixture_estimate_weights_each_component",),
    ),
    Mutant(
        "evaluation: CI percentile 2.5 -> 4",
        "rspo/evaluation/winrate.py",
        "np.percentile(means, [2.5, 97.5])",
        "np.percentile(means, [4, 96])",
        (
            "tests/test_mutation_evaluation.py::"
            "test_win_rate_interval_is_the_percentiles_of_the_seeded_resampled_means",
        ),
    ),  # fmt: skip
    Mutant(
        "score: iteration dropped from the generation seed",
        "rspo/selfplay/loop.py",
        'seed_parts=(c.run.seed, "gen", t)',
        'seed_parts=(c.run.seed, "gen", 1)',
        (MS + "test_generation_seeds_differ_between_iterations",),
    ),
    # --- the trainer's accumulation
    Mutant(
        "trainer: pi_ref samples attached to every non-first sample (mutmut_43)",
        "rspo/training/trainer.py",
        "if first[g] == p:",
        "if first[g] != p:",
        (MT + "test_accumulated_gradient_is_the_full_batch_gradient",),
    ),
    Mutant(
        "trainer: micro-batch loss scaled by its own size",
        "rspo/training/trainer.py",
        "num_samples=len(idx),",
        "num_samples=len(m),",
        (MT + "test_accumulated_gradient_is_the_full_batch_gradient",),
    ),
    Mutant(
        "trainer: lockstep padding pass without the model (mutmut_128)",
        "rspo/training/trainer.py",
        "_padding_pass(model, pad_id)  # (packed",
        "_padding_pass(None, pad_id)  # (packed",
        (MT + "test_lockstep_padding_pass_adds_exactly_zero",),
    ),
    Mutant(
        "objectives: pair terms divided by all rows, not pairs",
        "rspo/objectives/loss.py",
        "count = num_samples / 2 if self.pairwise else num_samples",
        "count = num_samples",
        (MT + "test_pair_losses_accumulate_whole_pairs_to_the_full_batch_gradient",),
    ),
    # --- survivors of the sampled mutmut run (benchmarks/results/mutation/report.md)
    Mutant(
        "score: reference samples for no prompts (mutmut_141)",
        "rspo/selfplay/score.py",
        "samples = ref_samples(idx)",
        "samples = ref_samples(None)",
        (MS + "test_reference_samples_are_scored_for_the_prompts_of_the_dataset",),
    ),
    Mutant(
        "judges: cache keys escape non-ASCII (mutmut_6)",
        "rspo/judges/cache.py",
        "response_b], ensure_ascii=False)",
        "response_b], ensure_ascii=True)",
        (MJ + "test_judgement_keys_are_stable_across_releases",),
    ),
    Mutant(
        "judges: cache close leaves the connection open (mutmut_3)",
        "rspo/judges/cache.py",
        "self._pid == os.getpid():\n                self._conn.close()",
        "self._pid != os.getpid():\n                self._conn.close()",
        (MJ + "test_cache_close_closes_its_connection_and_pickling_keeps_path_and_timeout",),
    ),
    Mutant(
        "rundir: a failed delete fails the overwrite (mutmut_23)",
        "rspo/selfplay/rundir.py",
        "shutil.rmtree(c, ignore_errors=True)",
        "shutil.rmtree(c, ignore_errors=None)",
        (
            "tests/test_mutation_rundir.py::"
            "test_overwrite_through_a_link_survives_a_file_that_cannot_be_deleted",
        ),
    ),  # fmt: skip
    Mutant(
        "game: KKT slack uses tau / phi'(0) (mutmut_10)",
        "rspo/game/equilibrium.py",
        "slack = P[off] @ pi - tau * reg.grad_at_zero(ref[off]) - c",
        "slack = P[off] @ pi - tau / reg.grad_at_zero(ref[off]) - c",
        ("tests/test_mutation_game.py::test_kkt_check_accepts_only_the_equilibrium_support",),
    ),
    Mutant(
        "score: a tied prompt ends the scan (mutmut_61)",
        "rspo/selfplay/score.py",
        "tied += 1\n            continue",
        "tied += 1\n            break",
        (MS + "test_a_tied_prompt_skips_only_itself",),
    ),
    Mutant(
        "trainer: padding forwards without lockstep (mutmut_123)",
        "rspo/training/trainer.py",
        "if lockstep and loss_fn.needs_ref_samples and not refs",
        "if lockstep or loss_fn.needs_ref_samples and not refs",
        (MT + "test_forward_passes_are_the_micro_batches_and_their_reference_samples",),
    ),
    Mutant(
        "rundir: a linked run counts as a run one level down (mutmut_21)",
        "rspo/selfplay/rundir.py",
        "subdirs = [c for c in inside if c.is_dir() and not c.is_symlink()]",
        "subdirs = [c for c in inside if c.is_dir() or not c.is_symlink()]",
        (
            "tests/test_mutation_rundir.py::"
            "test_overwrite_does_not_count_a_linked_run_as_one_level_down",
        ),
    ),  # fmt: skip
    Mutant(
        "evaluation: TensorBoard mirror skips numpy scalars",
        "rspo/evaluation/tensorboard.py",
        'if hasattr(v, "item") and callable(v.item)',
        'if hasattr(v, "itemx") and callable(v.item)',
        (
            "tests/test_mutation_evaluation.py::"
            "test_metrics_logger_mirrors_exactly_the_finite_real_scalars",
        ),
    ),  # fmt: skip
]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A copy of rspo/ to mutate (one file at a time, restored after each mutant)."""
    d = tmp_path_factory.mktemp("mutant_src")
    shutil.copytree(ROOT / "rspo", d / "rspo", ignore=shutil.ignore_patterns("__pycache__"))
    return d


def _pytest(src: Path, tests: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }  # fmt: skip
    cmd = [sys.executable, "-P", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           *tests]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _probe(src: Path) -> str:
    """Where the subprocess imports rspo from (must be the copy)."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", "import rspo; print(rspo.__file__)"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_mutant_list_is_well_formed():
    names = [m.name for m in MUTANTS]  # at most 20: each costs a pytest subprocess
    assert len(names) == len(set(names)) and 15 <= len(MUTANTS) <= 20
    for m in MUTANTS:
        text = (ROOT / m.file).read_text(encoding="utf-8")
        assert text.count(m.old) == 1, f"{m.name}: source line changed, update the entry"
        assert m.old != m.new
        for t in m.tests:
            path, _, fn = t.partition("::")
            assert re.search(rf"^def {re.escape(fn)}\(", (ROOT / path).read_text(), re.M), t


def test_mapped_tests_pass_on_the_original(src):
    assert Path(_probe(src)).is_relative_to(src)
    tests = sorted({t for m in MUTANTS for t in m.tests})
    r = _pytest(src, tests)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.parametrize("m", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_killed(src, m):
    path = src / m.file
    original = path.read_text(encoding="utf-8")
    assert original.count(m.old) == 1, f"{m.name}: source line changed, update the entry"
    path.write_text(original.replace(m.old, m.new), encoding="utf-8")
    try:
        r = _pytest(src, list(m.tests))
    finally:
        path.write_text(original, encoding="utf-8")
    # 1 = tests ran and failed (2 would be a collection error or interrupt: not a kill)
    assert r.returncode == 1, f"mutant survived or broke collection:\n{r.stdout[-3000:]}"
    assert re.search(r"\b1 failed\b", r.stdout), r.stdout[-3000:]
