"""The self-play iteration loop: generate → judge → score → train → evaluate, resumable.

One iteration t, each stage a plain function in its own module:

1. :mod:`.generate` — K seeded samples per prompt from π_t → ``generations.jsonl``
2. :mod:`.judge` — a K×K preference matrix per prompt → ``judgments.jsonl``
3. :mod:`.score` — win rates, chosen samples, log π_t / log π_ref, λ (:mod:`.kpi` when it
   follows a KPI) → ``dataset.json``
4. :mod:`.train` — π_{t+1} trained from π_t → ``checkpoint/``
5. :mod:`.evaluate` — π_{t+1} against π_ref on held-out prompts → ``metrics.json``
   (with :mod:`.spot`'s spot check and over-optimization alarm when configured)

:class:`SelfPlayRun` loads and checks the inputs once (:meth:`~SelfPlayRun.setup`; the
checks are in :mod:`.preflight`), wires each stage to its inputs (the ``stage_*`` methods)
and runs the loop (:meth:`~SelfPlayRun.run`). Each stage leaves a ``<stage>.done`` marker,
so re-running the same command skips finished stages and continues an unfinished one from
its last written record (generation, judging) or saved step (training): the bookkeeping
is :mod:`.resume`'s. Splitting work over data-parallel ranks is :mod:`.ops`'.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from rspo.config import Config, check_runnable, check_trainable
from rspo.distributed import DistContext, init_distributed, quiet_deepspeed_on_cpu
from rspo.evaluation.trackers import RunTrackers
from rspo.selfplay import inputs, preflight
from rspo.selfplay.evaluate import evaluate_policy, method_name
from rspo.selfplay.generate import records_logprobs, sample_records, sampling_params
from rspo.selfplay.judge import judge_records, pairs_of
from rspo.selfplay.kpi import kpi_coef
from rspo.selfplay.models import PolicyModels
from rspo.selfplay.ops import ModelOps
from rspo.selfplay.resume import append_chunks, complete_records, truncate_log
from rspo.selfplay.rundir import RunDir
from rspo.selfplay.schedule import policy_path, prompt_indices, ref_anchor, ref_path
from rspo.selfplay.score import reference_samples, training_set
from rspo.selfplay.spot import alarm_metrics, build_spot_judge, cached_spot_judge, stop_after
from rspo.selfplay.train import make_loss, train_iteration
from rspo.training.fsdp import engine_label, training_engine
from rspo.utils.faults import fault_point
from rspo.utils.io import append_jsonl, atomic_write_json, read_json
from rspo.utils.seeds import derive_seed

Log = Callable[[str], None]


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

    # ------------------------------------------------------------------ setup
    def setup(self) -> bool:
        """Load and check everything the run needs, then create or check the run dir.

        Bad input (model, tokenizer, prompts, objective, judges, evaluation settings) fails
        here, before the run directory is created or touched. True when resuming.
        """
        c, dist, rd = self.cfg, self.dist, self.rd
        check_runnable(c)
        inputs.import_plugins(c.run.imports)  # judges, regularizers: before anything is built
        # a resumed run is ours from the start (not after loading models); every rank raises
        dist.from_main(lambda: rd.root.is_dir() and rd.lock())
        self.report_to = preflight.check_launch_settings(c, dist)
        inputs.configure_process(c)  # threads, allocator, seeds
        self.tok = inputs.load_policy_tokenizer(c)
        self.train_prompts, self.eval_prompts = inputs.load_prompt_sets(
            c, self.tok, self.log if dist.is_main else None
        )
        self.models.max_len = preflight.check_prompts(
            c, dist, self.train_prompts, self.eval_prompts
        )
        self.loss_fn = make_loss(c.objective, c.objective.coef)
        judge, eval_judge = inputs.build_judges(c)
        if c.evaluation.enabled:
            preflight.check_evaluation_functions(c)
        spot_judge = build_spot_judge(c)  # evaluation.spot_check: fails before the run dir
        resuming = dist.from_main(rd.init, c, fresh=self.fresh)  # input is usable
        prompts = {"train": self.train_prompts, "eval": self.eval_prompts}
        dist.from_main(rd.check_prompts, prompts, resuming)
        self.judge = inputs.cached_judge(c, judge, rd.root)
        self.eval_judge = None  # evaluation.enabled: false (rspo eval then builds one)
        if eval_judge is not None:
            self.eval_judge = inputs.cached_eval_judge(c, eval_judge, rd.root)
        self.spot_judge = cached_spot_judge(c, spot_judge, rd.root)
        g, tr = c.generation, c.training
        self.ops = ModelOps(
            self.models, self.tok, dist, g.batch_size, tr.micro_batch_size, tr.packing
        )
        return resuming

    def prompt_indices(self, t: int) -> list[int]:
        """The training prompts of iteration t (``data.prompts_per_iteration``)."""
        return prompt_indices(len(self.train_prompts.ids), self.cfg.data.prompts_per_iteration, t)

    # ------------------------------------------------------------------ stages
    def stage_generate(self, t: int) -> None:
        """K seeded samples per prompt from π_t, appended per chunk to generations.jsonl."""
        c, K = self.cfg, self.cfg.generation.num_samples
        chunk = max(1, c.generation.batch_size // K)  # prompts per generate call
        body = partial(
            sample_records, self.ops, policy_path(c, self.rd, t), self.train_prompts.ids,
            k=K, seed_parts=(c.run.seed, "gen", t), params=sampling_params(c),
            unit=chunk * K, logprobs=records_logprobs(c, self.device),
        )  # fmt: skip
        out = self.rd.iter_dir(t) / "generations.jsonl"
        append_chunks(self.dist, out, "generate", self.prompt_indices(t), chunk, body)
        self.rd.mark_done(t, "generate")

    def stage_judge(self, t: int) -> None:
        """P(y_i ≻ y_j) for all K(K−1)/2 pairs per prompt (both orders if configured)."""
        c, K = self.cfg, self.cfg.generation.num_samples
        it = self.rd.iter_dir(t)
        gens = complete_records(it / "generations.jsonl", self.prompt_indices(t))
        chunk = max(1, c.judge.batch_size // len(pairs_of(K)))  # prompts per judge call
        body = partial(
            judge_records, self.ops, self.judge, self.train_prompts.texts,
            {g["prompt_index"]: g for g in gens}, k=K, both_orders=c.judge.both_orders,
            unit=chunk * len(pairs_of(K)),
        )  # fmt: skip
        indices = [g["prompt_index"] for g in gens]
        append_chunks(self.dist, it / "judgments.jsonl", "judge", indices, chunk, body)
        self.rd.mark_done(t, "judge")

    def stage_score(self, t: int) -> None:
        """The training set (dataset.json): win rates, chosen samples, their log π_t and
        log π_ref, π_ref's samples (forward-KL nll) and the coefficient λ."""
        c, rd, it = self.cfg, self.rd, self.rd.iter_dir(t)
        policy, ref = policy_path(c, rd, t), ref_path(c, rd, t)
        self.models.reference = ref  # held across iterations if keep_reference
        want = self.prompt_indices(t)
        gens = {g["prompt_index"]: g for g in complete_records(it / "generations.jsonl", want)}
        data, tied = training_set(
            gens,
            complete_records(it / "judgments.jsonl", want),
            self.train_prompts.ids,
            c.objective,
            c.judge.include_self_match,
            logprobs=self.ops.logprobs,
            policy=policy,
            ref=ref,
            ref_samples=partial(self._ref_samples, t) if self.loss_fn.needs_ref_samples else None,
            previous=None if t == 1 else rd.iter_dir(t - 1) / "dataset.json",
            coef=kpi_coef(self, t) if c.objective.adaptive == "kpi" else None,
        )
        fault_point("score", 1)  # a kill here must redo the whole (atomic) stage
        self.dist.main_only(atomic_write_json, it / "dataset.json", data)
        n, n_ref = len(data["examples"]), len(data["ref_examples"])
        rd.mark_done(t, "score", {"examples": n, "ref_examples": n_ref, "tied_prompts": tied})

    def _ref_samples(self, t: int, indices: list[int]) -> dict[int, list[list[int]]]:
        """Samples from π_ref per prompt (forward-KL NLL); iteration 1's serve when π_1 = π_ref.
        Kept per reference: MPO's refreshed magnet gets samples of its own."""
        c = self.cfg
        anchor = ref_anchor(c.objective.magnet_refresh, t)  # iteration whose output is π_ref
        name = f"ref_samples_{anchor:03d}.jsonl" if anchor else "ref_samples.jsonl"
        first_is_ref = ref_path(c, self.rd, 1) == c.model.path and not c.objective.magnet_refresh
        return reference_samples(
            self.ops,
            self.rd.root / name,
            indices,
            self.rd.iter_dir(1) / "generations.jsonl" if first_is_ref else None,
            ref_path(c, self.rd, t),
            self.train_prompts.ids,
            c.generation.num_samples,
            (c.run.seed, "ref", anchor) if anchor else (c.run.seed, "ref"),
            sampling_params(c),
        )

    def stage_train(self, t: int) -> dict[str, float]:
        """Train π_{t+1} from π_t; save a safetensors checkpoint with the tokenizer."""
        c, rd, it = self.cfg, self.rd, self.rd.iter_dir(t)
        data = read_json(it / "dataset.json")
        logf = it / "train_log.jsonl"

        def on_resume(resumed: int) -> None:  # the step the trainer's saved state gave
            self.dist.main_only(truncate_log, logf, resumed)
            if resumed:
                self.log(f"iteration {t}: training resumes after step {resumed} (saved state)")

        def log(m: dict[str, Any]) -> None:
            append_jsonl(logf, [m])
            self.trackers.log_train(t, m)

        last = train_iteration(
            c, self.models, self.tok, policy_path(c, rd, t), data, self.train_prompts.ids,
            self.loss_fn, derive_seed(c.run.seed, "train", t), it,
            log=log if self.dist.is_main else None,
            on_step=lambda step: fault_point("train", step),
            on_resume=on_resume,
            dist=self.dist,
        )  # fmt: skip
        rd.mark_done(t, "train", {**last, "coef": data.get("coef", c.objective.coef)})
        if c.run.keep_checkpoints == "last" and t > 1 and not c.objective.magnet_refresh:
            self.dist.main_only(shutil.rmtree, rd.checkpoint(t - 1), ignore_errors=True)
        return last

    def stage_evaluate(self, t: int) -> dict[str, Any]:
        """Win rate etc. of π_{t+1} (t = 0: the initial policy) against π_ref on eval prompts."""
        c, rd, it = self.cfg, self.rd, self.rd.iter_dir(t)
        metrics = evaluate_policy(
            c,
            self.ops,
            prompts=self.eval_prompts,
            policy=c.model.path if t == 0 else str(rd.checkpoint(t)),
            ref=ref_path(c, rd, 1),
            judge=self.eval_judge,
            proxy_judge=self.judge,
            out=it,
            baseline=rd.root / "eval_baseline.jsonl",
            iteration=t,
            generator=f"{method_name(c)}/iter_{t:03d}",
            log=self.log,
            spot_judge=self.spot_judge,
        )
        if t > 0:  # the coefficient this iteration trained with (varies when adaptive)
            metrics["coef"] = read_json(it / "dataset.json").get("coef")
        metrics.update(alarm_metrics(self, t, metrics))  # evaluation.spot_check's alarm
        self.dist.main_only(atomic_write_json, it / "metrics.json", metrics)
        rd.mark_done(t, "evaluate")
        rd.rebuild_metrics(c.run.iterations)
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
        c = self.cfg
        check_trainable(c)
        self._start()
        stages: list[tuple[str, Callable[[int], Any]]] = [
            ("generate", self.stage_generate),  # K samples per prompt from π_t
            ("judge", self.stage_judge),  # a K×K preference matrix per prompt
            ("score", self.stage_score),  # the training set: win rates, log-probs, λ
            ("train", self.stage_train),  # π_{t+1}
        ]
        if c.evaluation.enabled:
            stages.append(("evaluate", self.stage_evaluate))  # π_{t+1} vs π_ref
            if not self._done(0, "evaluate"):
                self.log(
                    "iter 0: evaluating the initial policy π_0 (the baseline every iteration "
                    "is compared with; reported as iteration 0)"
                )
                self._timed(0, "evaluate", self.stage_evaluate)
                self._log_metrics(0)
        for t in range(1, c.run.iterations + 1):
            for name, stage in stages:
                if not self._done(t, name):
                    self._timed(t, name, stage)
            if c.evaluation.enabled:
                self._log_metrics(t)
                if stop_after(self, t):  # run.stop_on_overoptimization
                    break
        return self._finish()

    def _start(self) -> None:
        """Set up; say what is resumed, where metrics are reported and how ranks split."""
        if self.setup():
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

    def _finish(self) -> list[dict[str, Any]]:
        """Release the models; the metrics rows and the run's frontier plot."""
        self.models.release()
        rows = self.dist.from_main(self.rd.rebuild_metrics, self.cfg.run.iterations)
        if rows:  # the run's own gold (and proxy) win rate against KL(π‖π_ref)
            from rspo.evaluation.plots import plot_frontier

            plot = self.rd.root / "plots" / "frontier.png"
            self.dist.main_only(plot_frontier, {method_name(self.cfg): rows}, plot)
        return rows

    def _timed(self, t: int, name: str, stage: Callable[[int], Any]) -> None:
        t0 = time.perf_counter()
        stage(t)
        self.log(f"iter {t} {name}: {time.perf_counter() - t0:.1f}s")

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


def run_selfplay(cfg: Config, log: Log = print, fresh: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) iterative regularized self-play for ``cfg``."""
    return SelfPlayRun(cfg, log=log, fresh=fresh).run()
