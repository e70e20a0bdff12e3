"""What a run loads before its first stage: process settings, tokenizer, prompts, judges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rspo.config import evaluation_judge
from rspo.data import PromptSet, load_prompts
from rspo.modeling import check_same_tokenizer, load_tokenizer, resolve_model_path
from rspo.utils.malloc import keep_freed_memory
from rspo.utils.seeds import seed_everything

if TYPE_CHECKING:
    from rspo.config import Config


def import_plugins(modules: list[str]) -> None:
    """``run.imports``: plug-ins (judges, regularizers) before anything is built."""
    if modules:
        from rspo.utils.imports import import_modules

        import_modules(modules)


def configure_process(c: Config) -> None:
    """Threads (``run.num_threads``), the allocator (``run.keep_freed_memory``), the seeds."""
    if c.run.num_threads:
        torch.set_num_threads(c.run.num_threads)
    if c.run.keep_freed_memory:
        keep_freed_memory()
    seed_everything(c.run.seed)


def load_policy_tokenizer(c: Config) -> Any:
    """The policy's tokenizer; ``model.ref_path`` must read the same token ids."""
    tok = load_tokenizer(c.model.path, c.model.trust_remote_code)
    if c.model.ref_path:
        ref = resolve_model_path(c.model.ref_path)
        check_same_tokenizer(tok, ref, "model.ref_path", c.model.trust_remote_code)
    return tok


def load_prompt_sets(
    c: Config, tok: Any, log: Callable[[str], None] | None
) -> tuple[PromptSet, PromptSet]:
    """The training and evaluation prompts; ``log`` (None: silent) says when a file holds
    fewer than ``data.num_prompts`` / ``data.num_eval_prompts``."""
    d = c.data
    sets = [
        load_prompts(path, tok, split, n, c.run.seed, d.chat_template, d.max_prompt_length)
        for path, split, n in ((d.prompts, "train", d.num_prompts),
                               (d.eval_prompts, "eval", d.num_eval_prompts))
    ]  # fmt: skip
    for key, ps, want in (
        ("data.num_prompts", sets[0], d.num_prompts),
        ("data.num_eval_prompts", sets[1], d.num_eval_prompts),
    ):
        if want and len(ps.ids) < want and log is not None:
            log(f"{key}: {want} asked for, {ps.source} holds {len(ps.ids)}; using those")
    return sets[0], sets[1]


def build_judges(c: Config) -> tuple[Any, Any | None]:
    """The training judge and, when evaluation is on, the evaluation judge (no caches yet:
    built before the run directory is touched, so a bad judge fails first)."""
    from rspo.judges import build_judge

    judge = build_judge(c.judge.name, **c.judge.kwargs)
    eval_judge = None
    if c.evaluation.enabled:
        name, kwargs = evaluation_judge(c)
        eval_judge = build_judge(name, **kwargs)
    return judge, eval_judge


def cache_path(c: Config, root: Path, name: str) -> Path:
    """Where a judge cache lives: ``run.cache_dir`` (local disk when the run directory is
    on a network filesystem, where SQLite's locking is unreliable), else the run dir."""
    d = c.run.cache_dir
    return (Path(d).expanduser() if d else root) / name


def cached_judge(c: Config, judge: Any, root: Path) -> Any:
    """The training judge behind its cache (``judge.cache``)."""
    from rspo.judges.cache import CachedJudge

    return CachedJudge(judge, cache_path(c, root, "judge_cache.sqlite")) if c.judge.cache else judge


def cached_eval_judge(c: Config, judge: Any, root: Path) -> Any:
    """The evaluation judge behind its cache (always): ``judge.batch_size`` pairs per call,
    each committed."""
    from rspo.judges.cache import CachedJudge

    return CachedJudge(judge, cache_path(c, root, "eval_judge_cache.sqlite"), c.judge.batch_size)


def build_eval_judge(c: Config, root: Path) -> Any:
    """The evaluation judge with its cache (``rspo eval`` with ``evaluation.enabled: false``,
    where setup builds none)."""
    from rspo.judges import build_judge

    name, kwargs = evaluation_judge(c)
    return cached_eval_judge(c, build_judge(name, **kwargs), root)
