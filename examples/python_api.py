"""rspo's Python API on the embedded gym: a config, a judge of your own, a run, its result.

    python examples/python_api.py [OUTPUT_DIR]      # ~20 s on a laptop CPU

The gym preset gives the small model's settings (the library's defaults are the paper's
recipe for a 7B model on a GPU); the overrides shrink the run to one short iteration.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import rspo


@rspo.register_judge("prefer-short")
class PreferShort(rspo.Judge):
    """Prefers the shorter response, more surely the larger the gap (a toy judge)."""

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = scale

    @property
    def judge_id(self) -> str:
        """Names the setting, so another scale never reuses this one's cached verdicts."""
        return f"prefer-short[scale={self.scale}]"

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        return [
            1.0 / (1.0 + 2.0 ** ((len(a) - len(b)) / self.scale))
            for a, b in zip(responses_a, responses_b)
        ]


def main(output: str = "runs/python_api") -> rspo.RunResult:
    """Train the gym's policy for one iteration against ``prefer-short``; print the result."""
    cfg = rspo.load_config(
        preset="gym",
        overrides={
            "judge.name": "prefer-short",  # training judge: ours; evaluation: the gym's gold
            "judge.kwargs": {"scale": 5.0},
            "objective.regularizer": "reverse_kl",
            "objective.coef": 0.5,
            "data.num_prompts": 16,
            "data.num_eval_prompts": 16,
            "generation.max_new_tokens": 16,
            "evaluation.max_new_tokens": 16,
            "evaluation.diversity_samples": 0,
            "evaluation.n_boot": 100,
            "run.iterations": 1,
            "run.num_threads": 1,
            "run.output": output,
        },
    )
    result = rspo.run(cfg, overwrite=True, log=None)
    for row in result.metrics:
        print(
            f"iteration {row['iteration']}: win rate vs π_ref {row['win_rate']:.3f}, "
            f"mean length {row['avg_length']:.1f}"
        )
    print(f"run directory: {result.run_dir}\nfinal policy: {result.checkpoint}")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
