"""Checks a run passes before any work: a setting that cannot work is refused at start,
naming the key to change, rather than mid-run (or as a hang between ranks)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from rspo.config import ConfigError, diff_configs, evaluation_judge
from rspo.evaluation.trackers import check_report_to
from rspo.modeling import resolve_model_path
from rspo.training.fsdp import check_launch, training_engine
from rspo.utils.hf_config import context_length

if TYPE_CHECKING:
    from rspo.config import Config
    from rspo.data import PromptSet
    from rspo.distributed import DistContext


def check_ranks_agree(dist: DistContext, what: str, mine: dict[str, Any]) -> None:
    """Every rank must run rank 0's config on rank 0's prompts: a rank launched with other
    overrides (or another prompt file on its node) would write other records into the
    run, or make other collectives and hang. Refused on every rank, naming the keys."""
    if not dist.enabled:
        return
    ranks = dist.all_gather(mine)
    for r, theirs in enumerate(ranks[1:], start=1):
        diff = diff_configs(ranks[0], theirs)
        if diff:
            raise ConfigError(
                f"rank {r} was started with another {what} than rank 0 (differing: "
                f"{', '.join(diff)}); launch every process with the same config, overrides "
                "and files"
            )


def check_launch_settings(c: Config, dist: DistContext) -> list[str]:
    """Ranks on one config; the training engine (FSDP1 or DeepSpeed missing), the trackers
    of ``run.report_to`` (one not installed) and the launch are usable. Returns the
    trackers' names."""
    check_ranks_agree(dist, "config", c.to_dict())
    engine = training_engine(dist)  # FSDP1 or DeepSpeed missing: refused before any work
    report_to = check_report_to(c.run.report_to)  # a tracker not installed: refused
    check_launch(c, engine, dist.world_size)
    return report_to


def check_prompts(c: Config, dist: DistContext, train: PromptSet, evals: PromptSet) -> int:
    """Ranks on the same prompts, which fit the policy's context and the gym judges; returns
    the longest prompt + response of the run (:func:`check_context`)."""
    check_ranks_agree(
        dist,
        "prompts",
        {
            key: hashlib.sha256(json.dumps(ps.ids).encode()).hexdigest()
            for key, ps in (("data.prompts", train), ("data.eval_prompts", evals))
        },
    )
    max_len = check_context(c, train, evals)
    check_gym_only(c, train, evals)
    return max_len


def check_context(c: Config, train: PromptSet, evals: PromptSet) -> int:
    """The longest prompt + response must fit the policy's context (max_position_embeddings,
    when its config names one): a longer sequence would fail or be garbage mid-run. Returns
    the longest prompt + response the run can produce (the vLLM engine's ``max_model_len``)."""
    from transformers import AutoConfig

    g, e = c.generation.max_new_tokens, c.evaluation.max_new_tokens
    train_len = max((len(p) for p in train.ids), default=0)
    eval_len = max((len(p) for p in evals.ids), default=0)
    sets = [("data.prompts", train_len, "generation.max_new_tokens", g)]
    if c.evaluation.enabled:
        sets.append(("data.eval_prompts", eval_len, "evaluation.max_new_tokens", e))
    needed = max(train_len + g, eval_len + e)  # eval prompts count: rspo eval samples them
    try:
        conf = AutoConfig.from_pretrained(
            resolve_model_path(c.model.path), trust_remote_code=c.model.trust_remote_code
        )
    except (OSError, ValueError):  # an adapter directory, a hub id offline: the load says why
        return needed
    ctx = context_length(conf)
    for key, longest, new_key, new in sets:
        if isinstance(ctx, int) and longest + new > ctx:
            raise ConfigError(
                f"{key}: the longest prompt ({longest} tokens) + {new_key} ({new}) = "
                f"{longest + new} tokens exceeds the context of model.path={c.model.path} "
                f"({ctx} tokens: max_position_embeddings, extended by any rope scaling); "
                f"lower {new_key} or data.max_prompt_length "
                "(longer prompts are then errors)"
            )
    return min(needed, ctx) if isinstance(ctx, int) else needed


def check_gym_only(c: Config, train: PromptSet, evals: PromptSet) -> None:
    """The gym's judges and answer checker read gym prompts only: with other prompts, say
    which setting to change before any work (not at the first judged pair)."""
    from rspo.gym.skills.tasks import lookup as skills_lookup
    from rspo.gym.tasks import lookup as v1_lookup

    uses = [("judge.name", c.judge.name, train)]
    if c.evaluation.enabled:  # the training judge gives the eval pairs' proxy_win_rate
        uses.append(("judge.name", c.judge.name, evals))
        uses.append(("evaluation.judge", evaluation_judge(c)[0], evals))
        uses.append(("evaluation.accuracy_fn", c.evaluation.accuracy_fn, evals))
        if c.evaluation.spot_check is not None:  # the spot judge reads eval prompts too
            uses.append(("evaluation.spot_check.judge", c.evaluation.spot_check.judge, evals))
    for key, value, ps in uses:
        if value == "gym-rm" or not (value.startswith("gym-") or value.startswith("rspo.gym.")):
            continue  # gym-rm is a reward model: it scores any text
        skills = value.startswith("gym-skills") or value.startswith("rspo.gym.skills.")
        lookup = skills_lookup if skills else v1_lookup
        for text in ps.texts:
            try:
                lookup(text)
            except ValueError:
                raise ConfigError(
                    f"{key}={value} reads only the gym's prompts, but {ps.source} has others "
                    f"(e.g. {text[:60]!r}); set {key} for your prompts (a reward_model, "
                    "pairwise_lm, python or openai judge; evaluation.accuracy_fn: '' for no "
                    "accuracy)"
                ) from None


def check_evaluation_functions(c: Config) -> None:
    """``evaluation.accuracy_fn`` and ``evaluation.subset_fn`` import (when set)."""
    from rspo.utils.imports import load_callable

    for key in ("accuracy_fn", "subset_fn"):
        spec = getattr(c.evaluation, key)
        if spec:
            load_callable(spec, f"evaluation.{key}")
