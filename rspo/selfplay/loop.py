"""The self-play iteration loop: generate → judge → score → train → evaluate, resumable.

Each stage appends records or writes files atomically and leaves a ``<stage>.done``
marker, so re-running the same command skips finished stages and continues an unfinished
one from its last written record (generation, judging) or saved step (training).
"""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rspo.config import (
    Config,
    ConfigError,
    check_runnable,
    check_trainable,
    diff_configs,
    evaluation_judge,
)
from rspo.data import PromptSet, load_prompts
from rspo.distributed import DistContext, init_distributed, quiet_deepspeed_on_cpu
from rspo.evaluation.trackers import RunTrackers, check_report_to
from rspo.generation import SamplingParams
from rspo.modeling import (
    batched_sequence_logprobs,
    check_same_tokenizer,
    free_memory,
    load_tokenizer,
    quiet_weight_bars,
    resolve_dtype,
    resolve_model_path,
    use_packing,
)
from rspo.objectives import RSPOLoss
from rspo.selfplay.adaptive import measure, update_coef
from rspo.selfplay.estimate import best_worst, win_rates
from rspo.selfplay.models import PolicyModels
from rspo.selfplay.rundir import RunDir
from rspo.training.fsdp import (
    check_launch,
    engine_label,
    full_state_dict,
    is_sharded,
    release,
    training_engine,
)
from rspo.training.trainer import RefExample, TrainExample, train_policy
from rspo.utils.faults import fault_point
from rspo.utils.hf_config import context_length
from rspo.utils.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
    writing,
)
from rspo.utils.malloc import keep_freed_memory
from rspo.utils.seeds import derive_seed, seed_everything

Log = Callable[[str], None]


def _check_context(c: Config, train: PromptSet, evals: PromptSet) -> int:
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


def _check_gym_only(c: Config, train: PromptSet, evals: PromptSet) -> None:
    """The gym's judges and answer checker read gym prompts only: with other prompts, say
    which setting to change before any work (not at the first judged pair)."""
    from rspo.gym.skills.tasks import lookup as skills_lookup
    from rspo.gym.tasks import lookup as v1_lookup

    uses = [("judge.name", c.judge.name, train)]
    if c.evaluation.enabled:  # the training judge gives the eval pairs' proxy_win_rate
        uses.append(("judge.name", c.judge.name, evals))
        uses.append(("evaluation.judge", evaluation_judge(c)[0], evals))
        uses.append(("evaluation.accuracy_fn", c.evaluation.accuracy_fn, evals))
        if c.evaluation.spot_check is not None:  # issue 18: the spot judge reads eval prompts
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


@dataclass
class SelfPlayRun:
    """Runs the iterations of one config in one run directory."""

    cfg: Config
    log: Log = print
    fresh: bool = False
    rd: RunDir = field(init=False)
    dist: DistContext = field(init=False)
    models: PolicyModels = field(init=False)

    def __post_init__(self) -> None:
        self.dist = init_distributed(self.cfg.model.device)
        self.rd = RunDir(self.cfg.run.output, writer=self.dist.is_main)
        self.device = self.dist.device(self.cfg.model.device)
        quiet_deepspeed_on_cpu(self.device)
        self.models = PolicyModels(self.cfg, self.device, self.dist)
        self.trackers = RunTrackers([], self.rd.root, {})  # run.report_to's: opened by run()
        if not self.dist.is_main:
            self.log = lambda m: None

    # ------------------------------------------------------------------ helpers
    def _policy_path(self, t: int) -> str:
        """π_t: the initial model for t = 1, else the checkpoint of iteration t − 1."""
        return self.cfg.model.path if t == 1 else str(self.rd.checkpoint(t - 1))

    def _ref_path(self, t: int) -> str:
        """π_ref, or the MPO magnet (policy at the last refresh) when magnet_refresh is set."""
        m = self.cfg.objective.magnet_refresh
        if m:
            anchor = ((t - 1) // m) * m  # iteration whose output is the magnet
            return self.cfg.model.path if anchor == 0 else str(self.rd.checkpoint(anchor))
        return self.cfg.model.ref_path or self.cfg.model.path

    def _model(self, path: str):
        """The model at ``path`` for read-only use (one resident at a time; see models.py)."""
        return self.models.get(path)

    def _complete(self, t: int, name: str, want: list[int]) -> list[dict[str, Any]]:
        """A finished stage's records, checked to hold each of the iteration's prompts once:
        a record lost or repeated by hand (or a disk fault) would otherwise change what is
        trained on without a word."""
        path = self.rd.iter_dir(t) / name
        recs = read_jsonl(path)
        got = [r["prompt_index"] for r in recs]
        if sorted(got) != sorted(want):
            missing = sorted(set(want) - set(got))
            counts = collections.Counter(got)
            extra = sorted({i for i, n in counts.items() if n > 1} | (set(got) - set(want)))
            raise ValueError(
                f"{path}: records for prompts {missing[:5]} missing, {extra[:5]} repeated or "
                f"unexpected ({len(got)} records, {len(want)} prompts); delete the file and "
                f"iter_{t:03d}'s later *.done markers to redo that stage"
            )
        return recs

    def _prompt_indices(self, t: int) -> list[int]:
        n = len(self.train_prompts.ids)
        per = self.cfg.data.prompts_per_iteration
        if not per or per >= n:
            return list(range(n))
        start = ((t - 1) * per) % n
        return [(start + j) % n for j in range(per)]

    def _sampling(self) -> SamplingParams:
        g = self.cfg.generation
        return SamplingParams(g.max_new_tokens, g.temperature, g.top_p, g.top_k)

    def _generate(
        self,
        path: str,
        prompt_ids: list[list[int]],
        seeds: list[int],
        params: SamplingParams,
        unit: int | None = None,
        logprobs: bool = False,
    ):
        """Completions; with W ranks each generates every W-th slice of ``unit`` sequences."""
        backend = self.models.generator(path, self.tok, logprobs=logprobs)
        return self.dist.shard_map(
            lambda sl: backend.generate(prompt_ids[sl], seeds[sl], params),
            len(prompt_ids),
            unit or self.cfg.generation.batch_size,
        )

    def _logprobs(self, path: str, prompts: list[list[int]], resps: list[list[int]]) -> list[float]:
        """Sequence log-probs under the model at ``path``, micro-batches sharded over ranks."""
        bs = self.cfg.training.micro_batch_size
        model, pad = self._model(path), self.tok.pad_token_id
        packing = use_packing(model, self.cfg.training.packing, pad)
        return self.dist.shard_map(
            lambda sl: batched_sequence_logprobs(model, prompts[sl], resps[sl], pad, bs, packing),
            len(prompts),
            bs,
        )

    def sample_records(
        self,
        path: str,
        prompt_ids: list[list[int]],
        idx: list[int],
        k: int,
        seed_parts: tuple,
        params: SamplingParams,
        unit: int | None = None,
        logprobs: bool = False,
    ) -> list[dict[str, Any]]:
        """``k`` seeded samples per prompt index as run-dir records (seed = parts + (i, j));
        with ``logprobs`` each response also carries ``logp`` = log π(response) at sampling."""
        ids = [prompt_ids[i] for i in idx for _ in range(k)]
        seeds = [derive_seed(*seed_parts, i, j) for i in idx for j in range(k)]
        comps = self._generate(path, ids, seeds, params, unit, logprobs)

        def rec(c) -> dict[str, Any]:
            r = {"ids": c.ids, "text": c.text, "finished": c.finished}
            if logprobs and c.logprob is not None:
                r["logp"] = c.logprob
            return r

        return [
            {"prompt_index": i, "responses": [rec(c) for c in comps[n * k : (n + 1) * k]]}
            for n, i in enumerate(idx)
        ]

    def _record_logprobs(self) -> bool:
        """``generation.logprobs``: record log π_t while sampling (HF backend; auto = float32)."""
        g, m = self.cfg.generation, self.cfg.model
        if g.logprobs == "off" or g.backend != "hf":
            return False
        return g.logprobs == "on" or resolve_dtype(m.dtype, self.device) == torch.float32

    # ------------------------------------------------------------------ setup
    def _check_ranks_agree(self, what: str, mine: dict[str, Any]) -> None:
        """Every rank must run rank 0's config on rank 0's prompts: a rank launched with other
        overrides (or another prompt file on its node) would write other records into the
        run, or make other collectives and hang. Refused on every rank, naming the keys."""
        if not self.dist.enabled:
            return
        ranks = self.dist.all_gather(mine)
        for r, theirs in enumerate(ranks[1:], start=1):
            diff = diff_configs(ranks[0], theirs)
            if diff:
                raise ConfigError(
                    f"rank {r} was started with another {what} than rank 0 (differing: "
                    f"{', '.join(diff)}); launch every process with the same config, overrides "
                    "and files"
                )

    def setup(self) -> bool:
        """Load and check everything the run needs, then create or check the run dir.

        Bad input (model, tokenizer, prompts, objective, judges, evaluation settings) fails
        here, before the run directory is created or touched. True when resuming.
        """
        c = self.cfg
        check_runnable(c)
        if c.run.imports:  # plug-ins (judges, regularizers) before anything is built
            from rspo.utils.imports import import_modules

            import_modules(c.run.imports)
        # a resumed run is ours from the start (not after loading models); every rank raises
        self.dist.from_main(lambda: self.rd.root.is_dir() and self.rd.lock())
        self._check_ranks_agree("config", c.to_dict())
        engine = training_engine(self.dist)  # FSDP1 or DeepSpeed missing: refused before any work
        self.report_to = check_report_to(c.run.report_to)  # a tracker not installed: refused
        check_launch(c, engine, self.dist.world_size)
        if c.run.num_threads:
            torch.set_num_threads(c.run.num_threads)
        if c.run.keep_freed_memory:
            keep_freed_memory()
        seed_everything(c.run.seed)
        self.tok = load_tokenizer(c.model.path, c.model.trust_remote_code)
        if c.model.ref_path:
            ref = resolve_model_path(c.model.ref_path)
            check_same_tokenizer(self.tok, ref, "model.ref_path", c.model.trust_remote_code)
        d = c.data
        self.train_prompts: PromptSet = load_prompts(
            d.prompts,
            self.tok,
            "train",
            d.num_prompts,
            c.run.seed,
            d.chat_template,
            d.max_prompt_length,
        )
        self.eval_prompts: PromptSet = load_prompts(
            d.eval_prompts,
            self.tok,
            "eval",
            d.num_eval_prompts,
            c.run.seed,
            d.chat_template,
            d.max_prompt_length,
        )
        for key, ps, want in (
            ("data.num_prompts", self.train_prompts, d.num_prompts),
            ("data.num_eval_prompts", self.eval_prompts, d.num_eval_prompts),
        ):
            if want and len(ps.ids) < want and self.dist.is_main:
                self.log(f"{key}: {want} asked for, {ps.source} holds {len(ps.ids)}; using those")
        self._check_ranks_agree(
            "prompts",
            {
                key: hashlib.sha256(json.dumps(ps.ids).encode()).hexdigest()
                for key, ps in (("data.prompts", self.train_prompts),
                                ("data.eval_prompts", self.eval_prompts))
            },
        )  # fmt: skip
        self.models.max_len = _check_context(c, self.train_prompts, self.eval_prompts)
        _check_gym_only(c, self.train_prompts, self.eval_prompts)
        self.loss_fn = self._make_loss(c.objective.coef)
        from rspo.judges import build_judge
        from rspo.judges.cache import CachedJudge

        judge = build_judge(c.judge.name, **c.judge.kwargs)
        eval_judge = None
        if c.evaluation.enabled:
            from rspo.selfplay.evaluate import load_callable

            name, kwargs = evaluation_judge(c)
            eval_judge = build_judge(name, **kwargs)
            for key in ("accuracy_fn", "subset_fn"):
                spec = getattr(c.evaluation, key)
                if spec:
                    load_callable(spec, f"evaluation.{key}")
        from rspo.selfplay.spot import attach_spot_judge, build_spot_judge

        spot_judge = build_spot_judge(c)  # issue 18: a bad spot judge fails before the run dir
        resuming = self.dist.from_main(self.rd.init, c, fresh=self.fresh)  # input is usable
        prompts = {"train": self.train_prompts, "eval": self.eval_prompts}
        self.dist.from_main(self.rd.check_prompts, prompts, resuming)
        cache = self.cache_path("judge_cache.sqlite")
        self.judge = CachedJudge(judge, cache) if c.judge.cache else judge
        if eval_judge is not None:  # picked up by evaluate._eval_judge
            self._eval_judge = CachedJudge(  # judge.batch_size pairs per call, each committed
                eval_judge, self.cache_path("eval_judge_cache.sqlite"), c.judge.batch_size
            )
        attach_spot_judge(self, spot_judge)  # issue 18: behind spot_judge_cache.sqlite
        return resuming

    def cache_path(self, name: str) -> Path:
        """Where a judge cache lives: ``run.cache_dir`` (local disk when the run directory is
        on a network filesystem, where SQLite's locking is unreliable), else the run dir."""
        d = self.cfg.run.cache_dir
        return (Path(d).expanduser() if d else self.rd.root) / name

    def _make_loss(self, coef: float) -> RSPOLoss:
        o = self.cfg.objective
        return RSPOLoss(
            eta=o.eta,
            regularizer=o.regularizer or None,
            coef=coef,
            loss_type=o.loss_type,
            tau=o.tau,
            log_clip=o.is_clip,
        )

    # ------------------------------------------------------------------ stages
    def stage_generate(self, t: int) -> None:
        """K seeded samples per prompt from π_t, appended per chunk to generations.jsonl."""
        out = self.rd.iter_dir(t) / "generations.jsonl"
        have = self.dist.from_main(read_jsonl, out, tolerate_torn_tail=True)
        done = {r["prompt_index"] for r in have}
        K = self.cfg.generation.num_samples
        chunk = max(1, self.cfg.generation.batch_size // K)
        pending = pending_chunks(self._prompt_indices(t), done, chunk)
        path = self._policy_path(t)
        W = self.dist.world_size  # one chunk (generate call) per rank per append
        for s in range(0, len(pending), W):
            idx = [i for part in pending[s : s + W] for i in part]
            recs = self.sample_records(
                path,
                self.train_prompts.ids,
                idx,
                K,
                (self.cfg.run.seed, "gen", t),
                self._sampling(),
                unit=chunk * K,
                logprobs=self._record_logprobs(),
            )
            recs = [r for r in recs if r["prompt_index"] not in done]
            self.dist.main_only(append_jsonl, out, recs)
            done.update(r["prompt_index"] for r in recs)
            fault_point("generate", len(done))
        self.rd.mark_done(t, "generate")

    def stage_judge(self, t: int) -> None:
        """P(y_i ≻ y_j) for all K(K−1)/2 pairs per prompt (both orders if configured)."""
        from rspo.judges.symmetric import symmetric_prefer

        gens = self._complete(t, "generations.jsonl", self._prompt_indices(t))
        out = self.rd.iter_dir(t) / "judgments.jsonl"
        have = self.dist.from_main(read_jsonl, out, tolerate_torn_tail=True)
        done = {r["prompt_index"] for r in have}
        K = self.cfg.generation.num_samples
        pairs = [(a, b) for a in range(K) for b in range(a + 1, K)]
        chunk = max(1, self.cfg.judge.batch_size // len(pairs))
        by_index = {g["prompt_index"]: g for g in gens}
        pending = pending_chunks([g["prompt_index"] for g in gens], done, chunk)

        def judge_part(part: list[dict[str, Any]]) -> list[dict[str, Any]]:
            prompts, ra, rb = [], [], []
            for g in part:
                text = self.train_prompts.texts[g["prompt_index"]]
                for a, b in pairs:
                    prompts.append(text)
                    ra.append(g["responses"][a]["text"])
                    rb.append(g["responses"][b]["text"])
            probs = symmetric_prefer(
                self.judge, prompts, ra, rb, both_orders=self.cfg.judge.both_orders
            )
            recs = []
            for j, g in enumerate(part):
                P = [[0.5] * K for _ in range(K)]
                for q, (a, b) in enumerate(pairs):
                    p = float(probs[j * len(pairs) + q])
                    P[a][b], P[b][a] = p, 1.0 - p
                recs.append({"prompt_index": g["prompt_index"], "P": P})
            return recs

        W = self.dist.world_size  # one judge call per rank per append
        for s in range(0, len(pending), W):
            part = [by_index[i] for c in pending[s : s + W] for i in c]
            recs = self.dist.shard_map(lambda sl, part=part: judge_part(part[sl]), len(part), chunk)
            recs = [r for r in recs if r["prompt_index"] not in done]
            self.dist.main_only(append_jsonl, out, recs)
            done.update(r["prompt_index"] for r in recs)
            fault_point("judge", len(done))
        self.rd.mark_done(t, "judge")

    def _ref_samples(self, t: int, indices: list[int]) -> dict[int, list[list[int]]]:
        """Samples from π_ref per prompt (forward-KL NLL); iteration 1's serve when π_1 = π_ref.
        Kept per reference: MPO's refreshed magnet gets samples of its own."""
        m = self.cfg.objective.magnet_refresh
        anchor = ((t - 1) // m) * m if m else 0  # the iteration whose output is π_ref (0: π_0)
        name = f"ref_samples_{anchor:03d}.jsonl" if anchor else "ref_samples.jsonl"
        path = self.rd.root / name
        have = {
            r["prompt_index"]: r["ids"]
            for r in self.dist.from_main(read_jsonl, path, tolerate_torn_tail=True)
        }
        missing = [i for i in indices if i not in have]
        if (
            missing
            and self._ref_path(1) == self.cfg.model.path
            and not self.cfg.objective.magnet_refresh
        ):
            first = {
                g["prompt_index"]: g for g in read_jsonl(self.rd.iter_dir(1) / "generations.jsonl")
            }
            recs = [
                {"prompt_index": i, "ids": [r["ids"] for r in first[i]["responses"]]}
                for i in missing
                if i in first
            ]
            self.dist.main_only(append_jsonl, path, recs)
            have.update({r["prompt_index"]: r["ids"] for r in recs})
            missing = [i for i in missing if i not in have]
        if missing:
            sampled = self.sample_records(
                self._ref_path(t),
                self.train_prompts.ids,
                missing,
                self.cfg.generation.num_samples,
                (self.cfg.run.seed, "ref", anchor) if anchor else (self.cfg.run.seed, "ref"),
                self._sampling(),
            )
            recs = [
                {"prompt_index": r["prompt_index"], "ids": [x["ids"] for x in r["responses"]]}
                for r in sampled
            ]
            self.dist.main_only(append_jsonl, path, recs)
            have.update({r["prompt_index"]: r["ids"] for r in recs})
        return {i: have[i] for i in indices}

    def stage_score(self, t: int) -> None:
        """Win rates, pair selection and log π_t, log π_ref of the training samples."""
        c = self.cfg
        self.models.reference = self._ref_path(t)  # held across iterations if keep_reference
        want = self._prompt_indices(t)
        gens = {g["prompt_index"]: g for g in self._complete(t, "generations.jsonl", want)}
        judg = self._complete(t, "judgments.jsonl", want)
        pair_losses = c.objective.loss_type in ("sppo_hard", "inpo")
        rows = []
        tied = 0
        for j in judg:
            i = j["prompt_index"]
            p_hat = win_rates(j["P"], c.judge.include_self_match)
            resp = gens[i]["responses"]
            if c.objective.samples == "best_worst" or pair_losses:
                b, w = best_worst(p_hat)
                if pair_losses and p_hat[b] - p_hat[w] <= 1e-9:
                    tied += 1  # the judge preferred none of them: no chosen/rejected pair
                    continue
                chosen = [(b, 1), (w, -1)]
            else:
                chosen = [(k, 0) for k in range(len(resp))]
            for k, label in chosen:
                rows.append(
                    {
                        "prompt_index": i,
                        "k": k,
                        "win_rate": p_hat[k],
                        "label": label,
                        "response_ids": resp[k]["ids"],
                    }
                )
        prompts = [self.train_prompts.ids[r["prompt_index"]] for r in rows]
        resps = [r["response_ids"] for r in rows]
        recorded = [gens[r["prompt_index"]]["responses"][r["k"]].get("logp") for r in rows]
        if rows and None not in recorded:  # log π_t recorded while sampling
            lp_t = recorded
        else:
            lp_t = self._logprobs(self._policy_path(t), prompts, resps)
        ref_path = self._ref_path(t)
        same = ref_path == self._policy_path(t)
        lp_ref = lp_t if same else self._logprobs(ref_path, prompts, resps)
        for r, a, b in zip(rows, lp_t, lp_ref):
            r["logp_t"], r["logp_ref"] = a, b
        ref_rows = []
        if self.loss_fn.needs_ref_samples:
            idx = sorted({r["prompt_index"] for r in rows})
            samples = self._ref_samples(t, idx)
            rp = [self.train_prompts.ids[i] for i in idx for _ in samples[i]]
            rr = [s for i in idx for s in samples[i]]
            lr = self._logprobs(ref_path, rp, rr)
            groups = [i for i in idx for _ in samples[i]]
            ref_rows = [
                {"prompt_index": g, "response_ids": s, "logp_ref": v}
                for g, s, v in zip(groups, rr, lr)
            ]
        coef, measured = self._coef_for(t, rows)
        fault_point("score", 1)  # a kill here must redo the whole (atomic) stage
        self.dist.main_only(
            atomic_write_json,
            self.rd.iter_dir(t) / "dataset.json",
            {"coef": coef, "measured": measured, "examples": rows, "ref_examples": ref_rows},
        )
        info = {"examples": len(rows), "ref_examples": len(ref_rows), "tied_prompts": tied}
        self.rd.mark_done(t, "score", info)

    def _coef_for(self, t: int, rows: list[dict[str, Any]]) -> tuple[float, float | None]:
        """λ for iteration t: fixed, or adapted from λ_{t−1} toward objective.adaptive_target."""
        o = self.cfg.objective
        if o.adaptive == "none":
            return o.coef, None
        if o.adaptive == "kpi":  # issue 18: λ from the KPI of the evaluated iterations before t
            from rspo.selfplay.kpi import kpi_coef

            return kpi_coef(self, t)
        prev = o.coef if t == 1 else read_json(self.rd.iter_dir(t - 1) / "dataset.json")["coef"]
        if not rows:  # nothing measured (every prompt tied): keep λ
            return prev, None
        m = measure(
            o.adaptive,
            [r["logp_t"] for r in rows],
            [r["logp_ref"] for r in rows],
            [len(r["response_ids"]) for r in rows],
        )
        return update_coef(prev, m, o.adaptive_target), m

    def stage_train(self, t: int) -> dict[str, float]:
        """Train π_{t+1} from π_t; save a safetensors checkpoint with the tokenizer."""
        c = self.cfg
        data = read_json(self.rd.iter_dir(t) / "dataset.json")
        P = self.train_prompts.ids
        ex = [
            TrainExample(
                P[r["prompt_index"]],
                r["response_ids"],
                r["win_rate"],
                r["logp_t"],
                r["logp_ref"],
                r["prompt_index"],
                r["label"],
            )
            for r in data["examples"]
        ]
        refs = [
            RefExample(P[r["prompt_index"]], r["response_ids"], r["logp_ref"], r["prompt_index"])
            for r in data["ref_examples"]
        ]
        model = self.models.trainable(self._policy_path(t))
        logf = self.rd.iter_dir(t) / "train_log.jsonl"

        def on_resume(resumed: int) -> None:  # the step the trainer's saved state gave
            self.dist.main_only(_truncate_log, logf, resumed)
            if resumed:
                self.log(f"iteration {t}: training resumes after step {resumed} (saved state)")

        def on_step(step: int) -> None:
            fault_point("train", step)

        torch.manual_seed(derive_seed(c.run.seed, "train", t))
        loss_fn = self.loss_fn
        if data.get("coef", self.cfg.objective.coef) != self.cfg.objective.coef:
            loss_fn = self._make_loss(data["coef"])
        last = train_policy(
            model,
            ex,
            loss_fn,
            c.training,
            derive_seed(c.run.seed, "train", t),
            self.tok.pad_token_id,
            state_dir=self.rd.iter_dir(t) / "train_state",
            ref_examples=refs,
            log=(lambda m: (append_jsonl(logf, [m]), self.trackers.log_train(t, m)))
            if self.dist.is_main
            else None,
            on_step=on_step,
            dist=self.dist,
            on_resume=on_resume,
        )
        state = full_state_dict(model) if is_sharded(model) else None  # a collective
        self.dist.main_only(self._save_checkpoint, t, model, state)
        if is_sharded(model):  # FSDP2 / DeepSpeed: free it all before the next generation
            gone = [*release(model), weakref.ref(model)]  # DeepSpeed: engine, optimizer
            del model
            free_memory(gone)  # sharded modules and engines hold reference cycles
        else:
            self.models.keep(str(self.rd.checkpoint(t)), model)  # = what a reload would give
        self.rd.mark_done(t, "train", {**last, "coef": data.get("coef", c.objective.coef)})
        if c.run.keep_checkpoints == "last" and t > 1 and not c.objective.magnet_refresh:
            self.dist.main_only(shutil.rmtree, self.rd.checkpoint(t - 1), ignore_errors=True)
        return last

    def _save_checkpoint(self, t: int, model, state: dict | None = None) -> None:
        """Swap in iteration t's checkpoint atomically; drop the training state (rank 0)."""
        ck = self.rd.checkpoint(t)
        tmp = ck.with_name("checkpoint.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        # a full disk names the checkpoint and leaves no .tmp; no "Writing model shards" bar
        with writing(tmp, cleanup=tmp), quiet_weight_bars():
            model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tok.save_pretrained(tmp)
        shutil.rmtree(ck, ignore_errors=True)
        tmp.rename(ck)
        shutil.rmtree(self.rd.iter_dir(t) / "train_state", ignore_errors=True)

    def stage_evaluate(self, t: int) -> dict[str, Any]:
        """Win rate etc. of π_{t+1} (t = 0: the initial policy) against π_ref on eval prompts."""
        from rspo.selfplay.evaluate import evaluate_iteration

        path = self.cfg.model.path if t == 0 else str(self.rd.checkpoint(t))
        metrics = evaluate_iteration(self, t, path)
        if t > 0:  # the coefficient this iteration trained with (varies when adaptive)
            metrics["coef"] = read_json(self.rd.iter_dir(t) / "dataset.json").get("coef")
        from rspo.selfplay.spot import alarm_metrics

        metrics.update(alarm_metrics(self, t, metrics))  # issue 18: over-optimization alarm
        self.dist.main_only(atomic_write_json, self.rd.iter_dir(t) / "metrics.json", metrics)
        self.rd.mark_done(t, "evaluate")
        self.rd.rebuild_metrics(self.cfg.run.iterations)
        if self.dist.is_main:
            self.trackers.log_eval(t, metrics)
        return metrics

    # ------------------------------------------------------------------ driver
    def run(self) -> list[dict[str, Any]]:
        """All iterations; finished stages are skipped. Returns the metrics rows."""
        try:
            return self._run()
        finally:
            self.trackers.close()
            self.rd.unlock()

    def _run(self) -> list[dict[str, Any]]:
        check_trainable(self.cfg)
        resuming = self.setup()
        if resuming:
            self.log(f"resuming run in {self.rd.root}")
        if self.dist.is_main and self.report_to:  # sends what a resumed run holds unsent
            self.trackers = RunTrackers(self.report_to, self.rd.root, self.cfg.to_dict())
            self.log(f"reporting to {', '.join(self.report_to)}")
        if self.dist.enabled:
            backend = torch.distributed.get_backend()
            engine = engine_label(training_engine(self.dist), self.dist.world_size)
            self.log(
                f"data parallel: {self.dist.world_size} ranks ({backend}), {self.device} on "
                f"rank 0, {engine} training"
            )
        c = self.cfg
        if c.evaluation.enabled and not self._done(0, "evaluate"):
            self.log(
                "iter 0: evaluating the initial policy π_0 (the baseline every iteration is "
                "compared with; reported as iteration 0)"
            )
            t0 = time.perf_counter()
            self.stage_evaluate(0)
            self.log(f"iter 0 evaluate: {time.perf_counter() - t0:.1f}s")
            self._log_metrics(0)
        stages = [
            ("generate", self.stage_generate),
            ("judge", self.stage_judge),
            ("score", self.stage_score),
            ("train", self.stage_train),
        ]
        if c.evaluation.enabled:
            stages.append(("evaluate", self.stage_evaluate))
        for t in range(1, c.run.iterations + 1):
            for name, fn in stages:
                if self._done(t, name):
                    continue
                t0 = time.perf_counter()
                fn(t)
                self.log(f"iter {t} {name}: {time.perf_counter() - t0:.1f}s")
            if c.evaluation.enabled:
                self._log_metrics(t)
                from rspo.selfplay.spot import stop_after

                if stop_after(self, t):  # issue 18: run.stop_on_overoptimization
                    break
        self.models.release()
        rows = self.dist.from_main(self.rd.rebuild_metrics, self.cfg.run.iterations)
        if rows:  # the run's own gold (and proxy) win rate against KL(π‖π_ref)
            from rspo.evaluation.plots import plot_frontier
            from rspo.selfplay.evaluate import _method

            self.dist.main_only(
                plot_frontier, {_method(c): rows}, self.rd.root / "plots" / "frontier.png"
            )
        return rows

    def _log_metrics(self, t: int) -> None:
        """One line of iteration t's evaluation (t = 0: the initial policy π_0)."""
        if not self.dist.is_main:
            return
        m = read_json(self.rd.iter_dir(t) / "metrics.json")
        who = " (initial policy π_0)" if t == 0 else ""
        self.log(
            f"iter {t}{who}: win_rate {m['win_rate']:.3f} [{m['win_rate_ci'][0]:.3f}, "
            f"{m['win_rate_ci'][1]:.3f}] vs π_ref, lc {m['lc_win_rate']:.3f} "
            f"len {m['avg_length']:.1f}"
        )

    def _done(self, t: int, stage: str) -> bool:
        """Rank 0's view of a stage marker (waits for rank 0 to finish the previous stage)."""
        return self.dist.from_main(self.rd.done, t, stage)


def pending_chunks(indices: list[int], done: set[int], size: int) -> list[list[int]]:
    """``indices`` cut at the chunk boundaries an uninterrupted run uses (every ``size``),
    keeping the chunks not wholly done. A chunk torn by a crash mid-append is redone whole,
    so its batch, and the float rounding of what is computed from it (log π_t, a model
    judge's outputs), is the uninterrupted run's; callers append only the records not yet
    written."""
    chunks = [indices[s : s + size] for s in range(0, len(indices), size)]
    return [c for c in chunks if not done.issuperset(c)]


def _truncate_log(logf, resumed_step: int) -> None:
    """Drop logged training steps after the last saved state (they are redone on resume)."""
    logged = read_jsonl(logf, tolerate_torn_tail=True)
    if any(r["step"] > resumed_step for r in logged):
        kept = [r for r in logged if r["step"] <= resumed_step]
        atomic_write_text(logf, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def run_selfplay(cfg: Config, log: Log = print, fresh: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) iterative regularized self-play for ``cfg``."""
    return SelfPlayRun(cfg, log=log, fresh=fresh).run()
