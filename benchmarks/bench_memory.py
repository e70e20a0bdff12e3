"""Peak RSS of an rspo training step (log-probs precomputed) vs a plain SFT step (CPU).

Each measurement is a fresh process, so peaks do not mix: import torch + transformers +
rspo (the baseline RSS), build a Llama from a config (no download), build one batch of
gym prompts with seeded random responses, then run the optimizer steps and read the
peak RSS (``ru_maxrss``). rspo: :func:`rspo.training.trainer.train_policy` with the
paper's regularizer on precomputed log pi_t / log pi_ref (computed without gradients, as
the score stage does), so only the trained model is in memory, its linear layers on oneDNN
as a run loads it (``model.cpu_linear: auto``). SFT: the same model, batch, micro-batching,
AdamW and gradient clipping with HF's own ``labels=`` loss (torch's F.linear).

    python benchmarks/bench_memory.py [--quick] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Report,
    base_parser,
    current_rss_mb,
    med,
    peak_rss_mb,
    repeats,
    run_worker,
    setup_env,
)

SCRIPT = Path(__file__).resolve()
MODES = ("sft", "rspo", "rspo_nll")
#: the regularizer of each rspo mode: the paper's headline (log-probs only) and forward-KL
#: NLL, which also back-propagates through pi_ref's samples in the same step
REGULARIZERS = {
    "rspo": "forward_kl[ratio] + 10*reverse_kl[k2]",
    "rspo_nll": "forward_kl[nll] + 10*reverse_kl[k2]",
}


def worker(s: dict[str, Any]) -> dict[str, Any]:
    """One mode's step(s) in this process; RSS figures in MiB."""
    import torch

    from rspo.config import TrainingConfig
    from rspo.gym import make_prompts
    from rspo.gym.model import build_tiny_llama
    from rspo.gym.tokenizer import build_byte_tokenizer
    from rspo.modeling import batched_sequence_logprobs
    from rspo.objectives import RSPOLoss
    from rspo.training.trainer import RefExample, TrainExample, train_policy
    from rspo.utils.onednn import route_linear

    rss_import = current_rss_mb()
    tok = build_byte_tokenizer()
    model = build_tiny_llama(tok, s["hidden"], s["layers"], s["heads"], seed=0)
    params = sum(p.numel() for p in model.parameters())
    B, L = s["batch"], s["response_tokens"]
    g = torch.Generator().manual_seed(0)
    prompts = [list(p.text.encode()) for p in make_prompts("train", B, seed=0)]
    responses = [
        torch.randint(0, 256, (L,), generator=g).tolist() + [tok.eos_token_id] for _ in prompts
    ]
    pad = tok.pad_token_id
    rss_model = current_rss_mb()
    cfg = TrainingConfig(
        optimizer="adamw",
        lr=1e-5,
        batch_size=B,
        micro_batch_size=s["micro_batch"],
        epochs=s["steps"],
        max_grad_norm=1.0,
        save_steps=0,
    )
    t0 = time.perf_counter()
    if s["mode"] == "sft":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        model.train()
        for _ in range(s["steps"]):
            for m in range(0, B, cfg.micro_batch_size):
                rows = list(zip(prompts, responses))[m : m + cfg.micro_batch_size]
                width = max(len(p) + len(r) for p, r in rows)
                ids = torch.full((len(rows), width), pad)
                attn = torch.zeros_like(ids)
                labels = torch.full_like(ids, -100)
                for i, (p, r) in enumerate(rows):
                    ids[i, : len(p) + len(r)] = torch.tensor(p + r)
                    attn[i, : len(p) + len(r)] = 1
                    labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
                loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
                (loss * len(rows) / B).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        route_linear(model)  # as rspo.modeling.load_model does (model.cpu_linear: auto)
        lp = batched_sequence_logprobs(model, prompts, responses, pad, cfg.micro_batch_size)
        ex = [
            TrainExample(p, r, 0.25 + 0.5 * (i % 2), v, v, i)
            for i, (p, r, v) in enumerate(zip(prompts, responses, lp))
        ]
        loss_fn = RSPOLoss(eta=10.0, regularizer=REGULARIZERS[s["mode"]], coef=0.2)
        refs = []
        if loss_fn.needs_ref_samples:  # one pi_ref sample per prompt, with its log-prob
            ref_resp = [r[::-1][1:] + [tok.eos_token_id] for r in responses]
            ref_lp = batched_sequence_logprobs(model, prompts, ref_resp, pad, cfg.micro_batch_size)
            refs = [
                RefExample(p, r, v, i) for i, (p, r, v) in enumerate(zip(prompts, ref_resp, ref_lp))
            ]
        train_policy(model, ex, loss_fn, cfg, seed=0, pad_id=pad, ref_examples=refs)
    step_s = (time.perf_counter() - t0) / s["steps"]
    return {
        "mode": s["mode"],
        "params": params,
        "rss_import_mb": rss_import,
        "rss_model_mb": rss_model,
        "peak_mb": peak_rss_mb(),
        "step_s": step_s,
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or one worker when --worker-out is given)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = base_parser(__doc__.splitlines()[0], default_repeats=3)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup_env(args.threads)
    if args.worker_out:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.settings))))
        return None

    R = repeats(args, 3)
    base = (
        {"hidden": 64, "layers": 2, "heads": 4, "batch": 4, "micro_batch": 4, "response_tokens": 16}
        if args.quick
        else {
            "hidden": 512,
            "layers": 8,
            "heads": 8,
            "batch": 16,
            "micro_batch": 16,
            "response_tokens": 64,
        }
    )
    base["steps"] = 1 if args.quick else 2
    rep = Report("bench_memory", argv, {**base, "repeats": R, "regularizers": REGULARIZERS})
    modes = MODES[:2] if args.quick else MODES  # --quick: SFT and the headline rspo step
    res: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(R):
        for mode in modes:
            wargs = [
                "--settings",
                json.dumps({**base, "mode": mode}),
                "--threads",
                str(args.threads),
            ]
            res[mode].append(run_worker(sys.executable, SCRIPT, wargs))
    agg = {}
    rows = []
    for mode in modes:
        m = {
            k: med([r[k] for r in res[mode]])
            for k in ("rss_import_mb", "rss_model_mb", "peak_mb", "step_s")
        }
        m["over_import_mb"] = med([r["peak_mb"] - r["rss_import_mb"] for r in res[mode]])
        agg[mode] = m
        label = {
            "sft": "plain SFT step",
            "rspo": f"rspo step ({REGULARIZERS['rspo']})",
            "rspo_nll": f"rspo step ({REGULARIZERS['rspo_nll']}, +pi_ref samples)",
        }[mode]
        rows.append(
            [
                label,
                res[mode][0]["params"],
                m["rss_import_mb"],
                m["rss_model_mb"],
                m["peak_mb"],
                m["over_import_mb"],
                m["step_s"],
            ]
        )
    rep.table(
        "memory",
        f"Peak RSS in MiB, fresh process each, medians of {R} (batch {base['batch']} x "
        f"~{base['response_tokens']} response tokens, AdamW, fp32)",
        [
            "step",
            "params",
            "RSS after import",
            "RSS after model+batch",
            "peak RSS",
            "peak - import",
            "s/step",
        ],
        rows,
    )
    rep.ratio(
        "rspo_vs_sft_peak",
        agg["rspo"]["peak_mb"],
        agg["sft"]["peak_mb"],
        "peak RSS of the rspo step / the SFT step",
        target="<= 1.2",
    )
    rep.ratio(
        "rspo_vs_sft_over_import",
        agg["rspo"]["over_import_mb"],
        agg["sft"]["over_import_mb"],
        "(peak - import baseline) of the rspo step / the SFT step",
    )
    if "rspo_nll" in agg:
        rep.ratio(
            "rspo_nll_vs_sft_peak",
            agg["rspo_nll"]["peak_mb"],
            agg["sft"]["peak_mb"],
            "peak RSS of the rspo step with pi_ref samples (forward-KL NLL) / the SFT step",
        )
    rep.note(
        "RSS after import = python + torch + transformers + rspo before any model exists: "
        "the floor every process pays; 'peak - import' is what the step itself costs."
    )
    return rep.finish(args.json)


if __name__ == "__main__":
    main()
