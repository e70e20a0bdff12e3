"""Judge calls per iteration and pairs/s: batched + sqlite cache vs unbatched; order swap.

One iteration's judging work: N gym prompts x K samples from the gym model, all
K(K-1)/2 pairs per prompt. Judges: ``gym-proxy`` (the gym's rule-based training judge),
and a ``reward_model`` and a ``pairwise_lm`` judge on small Llama models built here (no
download). Modes: *unbatched* (one ``prefer`` call per pair, model batch 1), *batched*
(the judge stage's chunks of ``judge.batch_size`` pairs), *batched + cache* with a cold
and a warm ``judge_cache.sqlite``. The order-swap table sends each pair in both
presentation orders (``judge.both_orders``), the default for order-sensitive judges.

    python benchmarks/bench_judge.py [--quick] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser, med, repeats, setup_env  # noqa: E402


def make_counting(judge: Any) -> Any:
    """Wrap ``judge`` so its ``prefer`` calls and ordered pairs are counted."""
    from rspo.judges.base import Judge

    class Counting(Judge):
        """Pass-through judge with call counters."""

        name = judge.name
        order_sensitive = judge.order_sensitive

        def __init__(self) -> None:
            self.calls = 0
            self.pairs = 0

        @property
        def judge_id(self) -> str:
            return judge.judge_id

        def _prefer(
            self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
        ) -> list[float]:
            self.calls += 1
            self.pairs += len(prompts)
            return judge.prefer(prompts, a, b)

    return Counting()


def forward_counter(judge: Any) -> dict[str, int]:
    """Count forward passes of a model judge's network (empty for rule-based judges)."""
    count = {"forwards": 0}
    model = getattr(judge, "model", None)
    if model is not None:
        model.register_forward_hook(lambda *_: count.__setitem__("forwards", count["forwards"] + 1))
    return count


def iteration_pairs(
    n: int, k: int, max_new_tokens: int, seed: int = 0
) -> list[tuple[str, str, str]]:
    """(prompt, a, b) for all K(K-1)/2 pairs of K gym-model samples per prompt, prompt-major."""
    from rspo.generation import SamplingParams, build_backend
    from rspo.gym import base_model_path, make_prompts
    from rspo.modeling import load_model, load_tokenizer
    from rspo.utils.seeds import derive_seed

    path = str(base_model_path())
    tok = load_tokenizer(path)
    model = load_model(path)
    prompts = [p.text for p in make_prompts("train", n, seed=seed)]
    ids = [tok(p)["input_ids"] for p in prompts for _ in range(k)]
    seeds = [derive_seed(seed, "bench", i, j) for i in range(n) for j in range(k)]
    comps = build_backend("hf", model, tok, 64).generate(ids, seeds, SamplingParams(max_new_tokens))
    out = []
    for i, p in enumerate(prompts):
        texts = [c.text for c in comps[i * k : (i + 1) * k]]
        out += [(p, texts[a], texts[b]) for a in range(k) for b in range(a + 1, k)]
    return out


def judge_stage(
    judge: Any,
    triples: list[tuple[str, str, str]],
    per_prompt: int,
    batch_size: int,
    both: bool | None,
) -> list[float]:
    """The judge stage's calls: chunks of whole prompts, about ``batch_size`` pairs each."""
    from rspo.judges import symmetric_prefer

    chunk = max(1, batch_size // per_prompt) * per_prompt
    out: list[float] = []
    for s in range(0, len(triples), chunk):
        p, a, b = zip(*triples[s : s + chunk])
        out += symmetric_prefer(judge, list(p), list(a), list(b), both_orders=both)
    return out


def unbatched(judge: Any, triples: list[tuple[str, str, str]], both: bool | None) -> list[float]:
    """One ``prefer`` call per pair (two with the order swap)."""
    from rspo.judges import symmetric_prefer

    return [symmetric_prefer(judge, [p], [a], [b], both_orders=both)[0] for p, a, b in triples]


def build_judges(tmp: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """Judge name -> constructor kwargs for the batched and the batch-size-1 variants."""
    from _selfplay import build_judge_model_dir

    hidden, layers = (32, 1) if quick else (128, 4)
    rm = build_judge_model_dir(tmp / "rm", "reward", hidden, layers)
    lm = build_judge_model_dir(tmp / "lm", "pairwise", hidden, layers)
    return {
        "gym-proxy": {"batched": {}, "single": {}},
        "reward_model": {
            "batched": {"model": str(rm), "batch_size": 32, "device": "cpu"},
            "single": {"model": str(rm), "batch_size": 1, "device": "cpu"},
        },
        "pairwise_lm": {
            "batched": {"model": str(lm), "batch_size": 32, "device": "cpu"},
            "single": {"model": str(lm), "batch_size": 1, "device": "cpu"},
        },
    }


def measure(
    name: str,
    kwargs: dict[str, Any],
    mode: str,
    triples: list[tuple[str, str, str]],
    per_prompt: int,
    batch_size: int,
    both: bool | None,
    R: int,
    tmp: Path,
) -> dict[str, Any]:
    """Median seconds over R repeats of one (judge, mode, swap) and its call counts."""
    from rspo.judges import build_judge
    from rspo.judges.cache import CachedJudge

    base = build_judge(name, **kwargs)
    fw = forward_counter(base)
    secs, counts = [], {}
    for r in range(R):
        inner = make_counting(base)
        fw["forwards"] = 0
        judge: Any = inner
        if mode.startswith("cache"):
            judge = CachedJudge(inner, tmp / f"{name}-{mode}-{both}-{r}.sqlite")
            if mode == "cache_warm":  # fill the cache first (not timed)
                judge_stage(judge, triples, per_prompt, batch_size, both)
                inner.calls = inner.pairs = fw["forwards"] = 0
        t0 = time.perf_counter()
        if mode == "unbatched":
            unbatched(judge, triples, both)
        else:
            judge_stage(judge, triples, per_prompt, batch_size, both)
        secs.append(time.perf_counter() - t0)
        counts = {"calls": inner.calls, "judgements": inner.pairs, "forwards": fw["forwards"]}
        if isinstance(judge, CachedJudge):
            judge.cache.close()
    s = med(secs)
    return {
        **counts,
        "seconds": s,
        "pairs_per_s": len(triples) / s,
        "order_sensitive": base.order_sensitive,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print/save its tables."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = base_parser(__doc__.splitlines()[0], default_repeats=3)
    ap.add_argument("--prompts", type=int, default=None, help="prompts (default 64, quick 4)")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt (default 4)")
    ap.add_argument("--batch-size", type=int, default=256, help="judge.batch_size (default 256)")
    args = ap.parse_args(argv)
    setup_env(args.threads)
    R = repeats(args, 3)
    n = args.prompts or (4 if args.quick else 64)
    mnt = 16 if args.quick else 48
    per_prompt = args.k * (args.k - 1) // 2
    settings = {
        "prompts": n,
        "k": args.k,
        "max_new_tokens": mnt,
        "judge_batch_size": args.batch_size,
        "repeats": R,
    }
    rep = Report("bench_judge", argv, settings)
    triples = iteration_pairs(n, args.k, mnt)
    settings["pairs_per_iteration"] = len(triples)
    with tempfile.TemporaryDirectory(prefix="rspo-bench-judge-") as td:
        tmp = Path(td)
        judges = build_judges(tmp, args.quick)
        rows, swap_rows, res = [], [], {}
        modes = [
            ("unbatched", "single", "unbatched (1 pair per call, model batch 1)"),
            ("batched", "batched", f"batched ({args.batch_size} pairs per call)"),
            ("cache_cold", "batched", "batched + sqlite cache, cold"),
            ("cache_warm", "batched", "batched + sqlite cache, warm (all hits)"),
        ]
        for name, variants in judges.items():
            for mode, variant, label in modes:
                m = measure(
                    name,
                    variants[variant],
                    mode,
                    triples,
                    per_prompt,
                    args.batch_size,
                    None,
                    R,
                    tmp,
                )
                res[(name, mode)] = m
                base_s = res[(name, "unbatched")]["seconds"]
                rows.append(
                    [
                        name,
                        label,
                        m["calls"],
                        m["judgements"],
                        m["forwards"],
                        m["seconds"],
                        m["pairs_per_s"],
                        base_s / m["seconds"],
                    ]
                )
            for both in (False, True):
                m = measure(
                    name,
                    variants["batched"],
                    "batched",
                    triples,
                    per_prompt,
                    args.batch_size,
                    both,
                    R,
                    tmp,
                )
                res[(name, f"swap_{both}")] = m
            off, on = res[(name, "swap_False")], res[(name, "swap_True")]
            for both, m in ((False, off), (True, on)):
                swap_rows.append(
                    [
                        name,
                        "both orders" if both else "one order",
                        m["calls"],
                        m["judgements"],
                        m["forwards"],
                        m["seconds"],
                        m["pairs_per_s"],
                        m["seconds"] / off["seconds"],
                    ]
                )
            default = "both orders" if on["order_sensitive"] else "one order"
            rep.data["settings"].setdefault("default_order", {})[name] = default
    rep.table(
        "modes",
        f"One iteration's judging: {n} prompts x K={args.k} = {len(triples)} pairs "
        f"(judge's default order setting; medians of {R})",
        [
            "judge",
            "mode",
            "judge calls",
            "judgements",
            "model forwards",
            "seconds",
            "pairs/s",
            "speed-up vs unbatched",
        ],
        rows,
    )
    rep.table(
        "order_swap",
        "Order swap (batched, no cache): each pair in one vs both presentation orders",
        [
            "judge",
            "orders",
            "judge calls",
            "judgements",
            "model forwards",
            "seconds",
            "pairs/s",
            "time vs one order",
        ],
        swap_rows,
    )
    for name in judges:
        rep.ratio(
            f"{name}_batched_vs_unbatched",
            res[(name, "batched")]["pairs_per_s"],
            res[(name, "unbatched")]["pairs_per_s"],
            f"pairs/s of {name}: batched / unbatched",
        )
        rep.ratio(
            f"{name}_warm_cache_vs_batched",
            res[(name, "cache_warm")]["pairs_per_s"],
            res[(name, "batched")]["pairs_per_s"],
            f"pairs/s of {name}: warm sqlite cache / batched without cache",
        )
        rep.ratio(
            f"{name}_swap_judgements",
            res[(name, "swap_True")]["judgements"],
            res[(name, "swap_False")]["judgements"],
            f"judgements sent to {name}: both orders / one order",
        )
    rep.note(
        "judge calls = prefer() calls reaching the judge (after the cache); judgements = "
        "ordered (prompt, a, b) triples it evaluated; model forwards = forward passes of the "
        "judge's network (reward_model scores each distinct response once per call, so the "
        "swapped order costs it no extra forwards; pairwise_lm runs one forward per ordered pair)."
    )
    rep.note(
        "gym-proxy and reward_model are symmetric (P(a>b) + P(b>a) = 1), so rspo asks them "
        "one order by default; pairwise_lm is order-sensitive and gets both orders by default."
    )
    return rep.finish(args.json)


if __name__ == "__main__":
    main()
