"""End-to-end self-play samples/s for one iteration: rspo vs TRL's OnlineDPOTrainer (CPU).

One rspo iteration = generate K samples per prompt, judge all K(K-1)/2 pairs, score
(log pi_ref; log pi_t is recorded while sampling), one optimizer step, checkpoint saved:
the real loop with its run directory. One TRL step = OnlineDPOTrainer.training_step
(2 samples per prompt, reward, policy + reference forward, backward) plus the optimizer
step. Both use the gym model,
the same gym prompts, the same batch, new-token cap, temperature, learning rate and
optimizer, and the gym-proxy judge (wrapped for TRL as a reward function that compares
each prompt's two completions). Every system runs in a fresh process per repeat,
systems interleaved, and one warm-up iteration is discarded.

    python benchmarks/bench_iteration.py [--quick] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Report,
    StageTimer,
    base_parser,
    med,
    repeats,
    run_worker,
    setup_env,
)

SCRIPT = Path(__file__).resolve()
#: set to an interpreter that has trl (e.g. a venv with ``pip install 'rspo[bench]'``)
TRL_PYTHON_ENV = "RSPO_BENCH_TRL_PYTHON"


def find_trl_python(explicit: str | None) -> str | None:
    """An interpreter with trl: --trl-python, $RSPO_BENCH_TRL_PYTHON, or this one if it has trl."""
    for cand in (explicit, os.environ.get(TRL_PYTHON_ENV)):
        if cand:
            return cand
    return sys.executable if importlib.util.find_spec("trl") is not None else None


# --------------------------------------------------------------------------- workers
def rspo_worker(s: dict[str, Any]) -> dict[str, Any]:
    """Timed rspo iterations in this process."""
    from _selfplay import rspo_iterations

    tmp = Path(tempfile.mkdtemp(prefix="rspo-bench-iter-"))
    try:
        out = rspo_iterations(s, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def trl_worker(s: dict[str, Any]) -> dict[str, Any]:
    """Timed TRL OnlineDPOTrainer steps in this process (needs trl)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rspo.gym import base_model_path, make_prompts
    from rspo.judges import build_judge

    judge = build_judge("gym-proxy")
    calls = {"n": 0, "pairs": 0, "tokens": 0.0}

    def gym_proxy_pairwise(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        """TRL passes the 2B completions as [first of each prompt..., second of each...]:
        the reward is P(first > second) - 1/2 and its negative, so TRL's
        'higher reward = chosen' picks exactly the judge's preferred completion."""
        n = len(prompts) // 2
        p = judge.prefer(prompts[:n], completions[:n], completions[n:])
        calls["n"] += 1
        calls["pairs"] += n
        return [x - 0.5 for x in p] + [0.5 - x for x in p]

    path = str(base_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if s.get("cpu_linear"):  # rspo's oneDNN linear layers (deepcopied into TRL's reference)
        from rspo.utils.onednn import route_linear

        route_linear(model, s["cpu_linear"])
    prompts = [p.text for p in make_prompts("train", s["prompts"], seed=s.get("seed", 0))]
    steps = s["warmup"] + s["measured"]
    timer = StageTimer()

    class TimedOnlineDPO(OnlineDPOTrainer):
        """OnlineDPOTrainer with wall-clock timers around its stages (behaviour unchanged)."""

        def _generate(self, *a: Any, **k: Any) -> Any:
            with timer("generate"):
                out = super()._generate(*a, **k)
            calls["tokens"] = float(out[3].sum())  # completion_mask: EOS included
            return out

        def _forward(self, model: Any, *a: Any, **k: Any) -> Any:
            key = "policy_forward" if torch.is_grad_enabled() else "ref_forward"
            with timer(key):
                return super()._forward(model, *a, **k)

        def _calculate_rewards_from_functions(self, *a: Any, **k: Any) -> Any:
            with timer("judge"):
                return super()._calculate_rewards_from_functions(*a, **k)

    rows: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        """Wall time from step begin to step end (training_step + optimizer step)."""

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            timer.pop()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            total = time.perf_counter() - self.t0
            rec = {"total": total, "cpu": time.process_time() - self.c0, **timer.pop()}
            rec["tokens"] = calls["tokens"]
            rec["rest"] = total - sum(
                rec.get(k, 0.0) for k in ("generate", "policy_forward", "ref_forward", "judge")
            )
            rows.append(rec)

    out_dir = tempfile.mkdtemp(prefix="rspo-bench-trl-")
    args = OnlineDPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=s["prompts"],
        gradient_accumulation_steps=1,
        max_steps=steps,
        max_new_tokens=s["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=1e-5,
        optim="adamw_torch",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=s.get("seed", 0),
        dataloader_num_workers=0,
        gradient_checkpointing=s["trl_gradient_checkpointing"],
        bf16=s["trl_bf16"],
    )
    trainer = TimedOnlineDPO(
        model=model,
        reward_funcs=gym_proxy_pairwise,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tok,
        callbacks=[StepClock()],
    )
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    shutil.rmtree(out_dir, ignore_errors=True)
    for r in rows:
        r["samples"] = 2 * s["prompts"]
    return {
        "trl": trl.__version__,
        "train_seconds": train_s,
        "iterations": rows,
        "measured": rows[s["warmup"] :],
        "judge_calls": calls["n"],
        "judge_pairs": calls["pairs"],
    }


# --------------------------------------------------------------------------- driver
RSPO, RSPO_K4 = "rspo K=2", "rspo K=4"
#: rspo with its two CPU engine settings off: glibc's malloc defaults, torch's F.linear (MKL)
RSPO_PLAIN = "rspo K=2, glibc malloc + torch's F.linear"
TRL_MATCHED = "TRL OnlineDPO (fp32, no grad ckpt)"
#: TRL matched with rspo's two CPU engine settings on: its malloc thresholds, oneDNN linear
TRL_SAME = "TRL OnlineDPO (fp32, no grad ckpt, rspo's malloc + oneDNN linear)"
TRL_DEFAULTS = "TRL OnlineDPO (TRL defaults: bf16, grad ckpt)"


def malloc_env() -> dict[str, str]:
    """glibc's environment form of the thresholds ``run.keep_freed_memory`` sets (for TRL)."""
    from rspo.utils.malloc import MMAP_THRESHOLD, TRIM_THRESHOLD

    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    }


def systems(base: dict[str, Any], trl_python: str | None) -> list[dict[str, Any]]:
    """The compared systems: rspo K=2 (TRL's sample count) with and without its CPU engine
    settings (malloc thresholds, oneDNN linear), rspo K=4, TRL matched without and with
    them, TRL defaults."""
    n = base["prompts"]
    plain = {"keep_freed_memory": False, "cpu_linear": "torch"}
    out = [
        {"name": RSPO, "kind": "rspo", **base, "k": 2},
        {"name": RSPO_PLAIN, "kind": "rspo", **base, "k": 2, **plain},
        {"name": RSPO_K4, "kind": "rspo", **base, "k": 4, "prompts": max(1, n // 2)},
    ]
    if trl_python:
        trl_base = {**base, "kind": "trl", "python": trl_python}
        matched = {**trl_base, "trl_gradient_checkpointing": False, "trl_bf16": False}
        out += [
            {"name": TRL_MATCHED, **matched},
            {"name": TRL_SAME, **matched, "env": malloc_env(), "cpu_linear": "onednn"},
            {
                "name": TRL_DEFAULTS,
                **trl_base,
                "trl_gradient_checkpointing": True,
                "trl_bf16": True,
            },
        ]
    return out


def summarize(per_repeat: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    """Median over repeats of each repeat's median per-iteration seconds, for ``keys``."""
    out = {}
    for k in keys:
        out[k] = med([med([it.get(k, 0.0) for it in rep["measured"]]) for rep in per_repeat])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or one worker when --worker is given)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = base_parser(__doc__.splitlines()[0], default_repeats=5)
    ap.add_argument("--prompts", type=int, default=None, help="prompts per iteration (default 32)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 48")
    ap.add_argument("--measured", type=int, default=None, help="timed iterations per process")
    ap.add_argument("--trl-python", default=None, help=f"python with trl (or ${TRL_PYTHON_ENV})")
    ap.add_argument("--no-trl", action="store_true", help="run the rspo half only")
    ap.add_argument("--worker", choices=["rspo", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup_env(args.threads)
    if args.worker:
        fn = rspo_worker if args.worker == "rspo" else trl_worker
        res = [fn(s) for s in json.loads(args.settings)]
        Path(args.worker_out).write_text(json.dumps(res))
        return None

    R = repeats(args, 5)
    base = {
        "prompts": args.prompts or (4 if args.quick else 32),
        "max_new_tokens": args.max_new_tokens or (16 if args.quick else 48),
        "warmup": 1,
        "measured": args.measured or (1 if args.quick else 3),
        "threads": args.threads,
        "seed": 0,
    }
    trl_python = None if args.no_trl else find_trl_python(args.trl_python)
    syss = systems(base, trl_python)
    rep = Report(
        "bench_iteration",
        argv,
        {**base, "repeats": R, "trl_python": trl_python, "systems": [x["name"] for x in syss]},
    )
    if args.no_trl:
        rep.note("TRL half skipped: --no-trl")
    elif trl_python is None:
        rep.note(
            "TRL half skipped: trl is not installed in this interpreter (pip install "
            f"'rspo[bench]', or point --trl-python / ${TRL_PYTHON_ENV} at a python that has it)"
        )
    results: dict[str, list[dict[str, Any]]] = {x["name"]: [] for x in syss}
    # a fresh process per system and repeat, interleaved so load changes hit all alike;
    # --quick shares one process per kind (rspo, trl) to keep the smoke run short
    groups = [[x] for x in syss]
    if args.quick:  # (engine settings are per process: systems that differ get their own)
        key = [
            (x["kind"], x.get("keep_freed_memory", True), x.get("cpu_linear"), "env" in x)
            for x in syss
        ]
        groups = [[x for x, k in zip(syss, key) if k == g] for g in dict.fromkeys(key)]
    # repeat r uses seed r for every system (prompt draw and sampling), so the headline
    # averages over R prompt sets and sample draws instead of repeating one draw R times
    for r_i in range(R):
        for group in groups:
            py = group[0].get("python", sys.executable)
            seeded = [{**x, "seed": x.get("seed", 0) + r_i} for x in group]
            wargs = ["--worker", group[0]["kind"], "--settings", json.dumps(seeded)]
            outs = run_worker(
                py, SCRIPT, [*wargs, "--threads", str(args.threads)], env=group[0].get("env")
            )
            for x, out in zip(group, outs):
                results[x["name"]].append(out)
    if trl_python:
        rep.data["settings"]["trl_version"] = results[TRL_MATCHED][0]["trl"]

    # ---- table 1: throughput
    rows, rate, cpu_rate, tok_rate = [], {}, {}, {}
    for x in syss:
        per = results[x["name"]]
        samples = per[0]["measured"][0]["samples"]
        totals = [med([it["total"] for it in r["measured"]]) for r in per]
        sec = med(totals)
        cpu = med([med([it["cpu"] for it in r["measured"]]) for r in per])
        rate[x["name"]] = samples / sec
        cpu_rate[x["name"]] = samples / cpu
        tokens = med([med([it["tokens"] for it in r["measured"]]) for r in per]) / samples
        tok_rate[x["name"]] = samples * tokens / sec
        rows.append(
            [
                x["name"],
                x["prompts"],
                x.get("k", 2),
                samples,
                tokens,
                sec,
                f"{min(totals):.3f}–{max(totals):.3f}",
                cpu,
                rate[x["name"]],
                cpu_rate[x["name"]],
            ]
        )
    rep.table(
        "throughput",
        "Samples/s of one self-play iteration (median over repeats of the per-process median "
        "iteration; CPU s = process CPU time, less sensitive to other jobs on the machine)",
        [
            "system",
            "prompts",
            "samples/prompt",
            "samples/iter",
            "mean resp tokens",
            "s/iter",
            "s/iter range",
            "CPU s/iter",
            "samples/s",
            "samples/CPU-s",
        ],
        rows,
    )

    # ---- table 2: rspo stages
    stage_keys = [
        "generate",
        "generate_load",
        "judge",
        "score",
        "score_load",
        "score_nograd_fwd",
        "train",
        "train_load",
        "train_grad_fwd",
        "train_backward",
        "train_optimizer",
        "train_save",
        "total",
    ]
    srows, rspo_m = [], {}
    for x in [s for s in syss if s["kind"] == "rspo"]:
        per = results[x["name"]]
        for rec in (it for r in per for it in r["measured"]):
            rec["fsync"] = sum(v for k, v in rec.items() if k.endswith("_fsync"))
        m = summarize(per, [*stage_keys, "fsync"])
        rspo_m[x["name"]] = m
        srows.append([x["name"], *[m[k] for k in stage_keys[:-1]], m["fsync"], m["total"]])
        it = per[0]["measured"][0]
        rep.data["settings"].setdefault("rspo_counts", {})[x["name"]] = {
            "judge_evals_per_iter": it["judge_pairs"],
            "judge_calls_per_iter": it["judge_calls"],
            "mean_response_tokens": it["tokens"] / it["samples"],
        }
    rep.table(
        "rspo_stages",
        "rspo seconds per iteration by stage, and inside the stages (medians; load = model "
        "loads, no-grad fwd = log pi_ref (log pi_t is recorded while sampling), save = "
        "checkpoint, fsync = all stages)",
        [
            "system",
            "generate",
            "gen: load",
            "judge",
            "score",
            "score: load",
            "score: no-grad fwd",
            "train",
            "train: load",
            "train: grad fwd",
            "train: backward",
            "train: optimizer",
            "train: save",
            "fsync",
            "total",
        ],
        srows,
    )

    # ---- table 3: TRL stages
    if trl_python:
        tkeys = ["generate", "judge", "policy_forward", "ref_forward", "rest", "total"]
        trows = []
        for x in [s for s in syss if s["kind"] == "trl"]:
            m = summarize(results[x["name"]], tkeys)
            trows.append([x["name"], *[m[k] for k in tkeys]])
        rep.table(
            "trl_stages",
            "TRL OnlineDPO step seconds (medians; rest = backward + optimizer + Trainer overhead)",
            ["system", "generate", "judge (reward fn)", "policy fwd", "ref fwd", "rest", "total"],
            trows,
        )
        matched = TRL_MATCHED
        r_m, t_m = rspo_m[RSPO], summarize(results[matched], tkeys)
        r_bwd = r_m["train_backward"] + r_m["train_optimizer"]
        r_known = (
            r_m["generate"] + r_m["judge"] + r_m["score_nograd_fwd"] + r_m["train_grad_fwd"] + r_bwd
        )
        rep.table(
            "where_time_goes",
            f"Where the time goes, rspo K=2 vs {matched} (seconds per iteration, medians)",
            ["work", "rspo K=2", "TRL", "rspo - TRL"],
            [
                ["generate", r_m["generate"], t_m["generate"], r_m["generate"] - t_m["generate"]],
                ["judge", r_m["judge"], t_m["judge"], r_m["judge"] - t_m["judge"]],
                [
                    "no-grad forwards (rspo: log pi_ref; TRL: ref)",
                    r_m["score_nograd_fwd"],
                    t_m["ref_forward"],
                    r_m["score_nograd_fwd"] - t_m["ref_forward"],
                ],
                [
                    "policy forward with grad",
                    r_m["train_grad_fwd"],
                    t_m["policy_forward"],
                    r_m["train_grad_fwd"] - t_m["policy_forward"],
                ],
                [
                    "backward + optimizer (TRL: + Trainer overhead)",
                    r_bwd,
                    t_m["rest"],
                    r_bwd - t_m["rest"],
                ],
                [
                    "rspo run dir: model loads, checkpoint, records, fsync, other",
                    r_m["total"] - r_known,
                    0.0,
                    r_m["total"] - r_known,
                ],
                ["total", r_m["total"], t_m["total"], r_m["total"] - t_m["total"]],
            ],
        )
        for key, other in (("trl", TRL_MATCHED), ("trl_defaults", TRL_DEFAULTS)):
            rep.ratio(
                f"rspo_vs_{key}",
                rate[RSPO],
                rate[other],
                f"samples/s (wall) of rspo K=2 / {other}",
                target=">= 2" if key == "trl" else "",
            )
            rep.ratio(
                f"rspo_vs_{key}_cpu",
                cpu_rate[RSPO],
                cpu_rate[other],
                f"samples per CPU-second of rspo K=2 / {other}",
            )
            rep.ratio(
                f"rspo_vs_{key}_tokens",
                tok_rate[RSPO],
                tok_rate[other],
                f"response tokens/s (wall) of rspo K=2 / {other} (corrects for sampled lengths)",
            )
        # the engine settings' share: both systems with them, both without
        rep.ratio(
            "rspo_vs_trl_same_settings",
            rate[RSPO],
            rate[TRL_SAME],
            f"samples/s of rspo K=2 / {TRL_SAME}: both with rspo's malloc thresholds and "
            "oneDNN linear layers",
        )
        rep.ratio(
            "rspo_vs_trl_torch_defaults",
            rate[RSPO_PLAIN],
            rate[TRL_MATCHED],
            f"samples/s of {RSPO_PLAIN} / {TRL_MATCHED}: both with glibc's and torch's defaults",
        )
        rep.ratio(
            "trl_settings_gain",
            rate[TRL_SAME],
            rate[TRL_MATCHED],
            f"samples/s of {TRL_SAME} / {TRL_MATCHED}",
        )
    rep.ratio(
        "rspo_k4_vs_k2",
        rate[RSPO_K4],
        rate[RSPO],
        "samples/s of rspo K=4 (half the prompts, same samples) / rspo K=2",
    )
    rep.ratio(
        "rspo_settings_gain",
        rate[RSPO],
        rate[RSPO_PLAIN],
        f"samples/s of rspo K=2 (run.keep_freed_memory: true, model.cpu_linear: auto, the "
        f"defaults) / {RSPO_PLAIN}",
    )
    rep.note(
        "samples = generated completions that are judged and trained on; one optimizer step "
        "per iteration for both (rspo: training.batch_size = samples, epochs = 1)."
    )
    rep.note(
        "rspo's iteration includes its run-directory work (JSONL records, sqlite judge cache, "
        "saving the new checkpoint; the trained policy stays in memory for the next "
        "generation and training, and pi_ref too: model.keep_reference auto holds it when its "
        "weights take at most 5% of the device's memory) that makes it resumable; TRL keeps "
        "both models in memory and saves nothing (save_strategy='no')."
    )
    rep.note(
        "rspo's two CPU engine settings, on by default: glibc's malloc trim and mmap "
        "thresholds set at startup (run.keep_freed_memory), so the memory a training step "
        "frees is reused by the next instead of being returned to the OS and faulted in "
        "again; and float32 nn.Linear layers run by oneDNN instead of MKL (model.cpu_linear: "
        "auto; on AMD CPUs MKL's float32 GEMM takes a slower generic path). "
        f"'{RSPO_PLAIN}' runs without both; '{TRL_SAME}' gives TRL both (the thresholds "
        "through MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_, its policy's linear layers "
        "routed by rspo.utils.onednn.route_linear before the trainer copies it as the "
        "reference)."
    )
    return rep.finish(args.json)


if __name__ == "__main__":
    main()
