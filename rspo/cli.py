"""The ``rspo`` command line: game, train, eval, demo, sweep, config, select, export."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cmd_game(args: argparse.Namespace, extra: list[str]) -> int:
    from rspo.game import run_game

    try:
        run_game(
            args.game,
            args.n,
            args.regularizer,
            args.tau,
            args.eta,
            args.iters,
            args.seed,
            every=args.every,
            as_json=args.json,
            plot=args.plot,
        )
    except FloatingPointError as e:  # the dynamics overflowed: a setting, not a bug
        print(f"error: {e}; lower --eta (or --tau)", file=sys.stderr)
        return 1
    return 0


def _load_cfg(args: argparse.Namespace, extra: list[str]):
    from rspo.config import deep_merge, load_config, parse_overrides

    overrides = parse_overrides(list(extra))  # a dangling --key is named, not fed --output
    if getattr(args, "output", None):
        overrides = deep_merge(overrides, {"run": {"output": args.output}})
    return load_config(args.config, overrides)


def resume_command(argv: Sequence[str], command: str = "train") -> str:
    """The command that resumes an interrupted ``rspo train`` (or ``demo``): the same
    arguments, shell-quoted, without ``--overwrite`` or an abbreviation of it (which would
    delete what was saved)."""
    import shlex

    if not argv or not Path(argv[0]).name.startswith("rspo"):
        return f"rspo {command} ... (the same arguments, without --overwrite)"
    keep = [a for a in argv[1:] if not (a.startswith("--ov") and "--overwrite".startswith(a))]
    return shlex.join(["rspo", *keep])


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from rspo.config import check_trainable
    from rspo.distributed import init_distributed, shutdown
    from rspo.selfplay.rundir import remove_output

    cfg = _load_cfg(args, extra)
    if args.dry_run:
        import json

        from rspo.training.dry_run import dry_run

        report = dry_run(cfg)
        if init_distributed(cfg.model.device).is_main:
            print(json.dumps(report, indent=2))
        shutdown()
        return 0
    from rspo.selfplay.rundir import check_output_dir

    out = Path(cfg.run.output)
    check_output_dir(out, "--output" if args.output else "run.output")
    if args.resume and not (out / "config.yaml").exists():
        print(f"error: --resume given but {out} holds no run", file=sys.stderr)
        return 2
    if args.resume and args.overwrite:
        print("error: --resume and --overwrite contradict each other", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # before torch/transformers load (seconds)
        again = (out / "config.yaml").exists() and not args.overwrite
        print(
            f"rspo train: {'resuming' if again else 'starting'} {out} "
            f"({cfg.run.iterations} iterations, model {cfg.model.path}); loading...",
            flush=True,
        )
    from rspo.selfplay.loop import run_selfplay

    check_trainable(cfg)  # before --overwrite deletes anything
    dist = init_distributed(cfg.model.device)  # one process: no torch.distributed at all
    if args.overwrite:
        dist.from_main(remove_output, out)
    try:
        rows = run_selfplay(cfg)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; everything finished is saved in {out}. Resume with: "
            f"{resume_command(sys.argv)}",
            file=sys.stderr,
        )
        return 130
    if dist.is_main:
        if rows:
            trained = [r["iteration"] for r in rows if r.get("iteration", 0) > 0]
            print(
                f"done: {len(trained)} iterations trained and evaluated, plus iteration 0 (the "
                f"initial policy π_0, before training): {len(rows)} rows in {out}/metrics.jsonl"
            )
        else:  # evaluation.enabled: false
            last = out / f"iter_{cfg.run.iterations:03d}" / "checkpoint"
            print(f"done: {cfg.run.iterations} iterations (not evaluated); last policy: {last}")
    shutdown()
    return 0


def _cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    print(_load_cfg(args, extra).to_yaml(), end="")
    return 0


def _cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from rspo.config import check_trainable
    from rspo.demo import DEMO_METHODS, demo_config, run_demo
    from rspo.selfplay.rundir import check_output_dir, remove_output

    out = args.output or ("runs/demo-quick" if args.quick else "runs/demo")
    check_output_dir(out, "--output")
    for method in DEMO_METHODS:  # bad overrides fail before --overwrite deletes anything
        check_trainable(demo_config(method, out, args.quick, extra))
    if args.overwrite:
        remove_output(out)
    try:
        run_demo(output=out, quick=args.quick, overrides=extra)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; everything finished is saved in {out}. Resume with: "
            f"{resume_command(sys.argv, 'demo')}",
            file=sys.stderr,
        )
        return 130
    return 0


def _cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from rspo.distributed import init_distributed, shutdown
    from rspo.selfplay.rundir import check_output_dir
    from rspo.selfplay.standalone import check_model, default_eval_dir, evaluate_model

    cfg = _load_cfg(args, extra)
    check_model(args.model)
    out = Path(args.out) if args.out else default_eval_dir(cfg, args.model, bool(args.output))
    check_output_dir(out, "--out")
    main_process = init_distributed(cfg.model.device).is_main
    if main_process:
        print(f"rspo eval: evaluating {args.model}; outputs go to {out}", file=sys.stderr)
    metrics = evaluate_model(cfg, args.model, str(out))
    if main_process:
        print(json.dumps(metrics, indent=2))
        print(f"rspo eval: wrote {out / 'metrics.json'} and model_outputs.json", file=sys.stderr)
    shutdown()
    return 0


def _cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from rspo.sweep import SweepError, run_sweep

    if extra:  # a sweep's settings live in its YAML file
        print(
            f"error: unrecognized arguments: {' '.join(extra)} (rspo sweep takes --config, "
            "--quick, --output, --parallel; put run settings in the sweep file's base:)",
            file=sys.stderr,
        )
        return 2

    path = args.config
    if path is None:
        from importlib.resources import files

        path = str(
            files("rspo") / "configs" / ("sweep_quick.yaml" if args.quick else "sweep_gym.yaml")
        )
    try:
        run_sweep(path, output=args.output, parallel=args.parallel)
    except SweepError as e:
        print(f"{e.stderr.rstrip()}\nerror: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_select(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from rspo.selfplay.select import select_iteration

    if extra:
        print(f"error: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    print(json.dumps(select_iteration(args.run_dir, args.by, minimize=args.min)))
    return 0


def _cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from rspo.evaluation.export import default_model_id, export_answers, hf_generate
    from rspo.selfplay.standalone import check_model

    cfg = _load_cfg(args, extra)
    check_model(args.model)
    files = {"alpaca_eval": args.alpaca_eval, "arena_hard": args.arena_hard,
             "mt_bench": args.mt_bench}  # fmt: skip
    files = {b: f for b, f in files.items() if f}
    max_new = args.max_new_tokens or cfg.evaluation.max_new_tokens
    model_id = args.model_id or default_model_id(args.model)
    settings = {"model": str(Path(args.model).resolve()) if Path(args.model).exists()
                else args.model, "max_new_tokens": max_new, "temperature": args.temperature,
                "chat_template": cfg.data.chat_template, "seed": cfg.run.seed}  # fmt: skip
    generate, count = hf_generate(args.model, cfg, max_new, args.temperature, cfg.run.seed)
    written = export_answers(
        args.out, files, generate, model_id, settings, count, cfg.generation.batch_size,
        overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    for bench, path in written.items():
        print(f"{bench}: {path}")
    return 0


#: the --help epilog of the commands that take config overrides
OVERRIDES_HELP = """\
config overrides:
  Any config key can be set on the command line as --section.key VALUE (or
  --section.key=VALUE); VALUE is read as YAML. Overrides win over --config.
  --preset NAME (gym, gym-skills, or a YAML file) gives every value that
  neither sets. `rspo config` prints every key with its resolved value.

example:
  rspo train --config my.yaml --training.lr 5e-7 --run.iterations 3 \\
      --judge.kwargs '{model: /models/reward}' --output runs/mine
"""


def _overridable(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand that takes ``key=value`` config overrides (listed in its epilog)."""
    return sub.add_parser(
        name, help=help, epilog=OVERRIDES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; config overrides (``--section.key VALUE``) pass through."""
    p = argparse.ArgumentParser(
        prog="rspo", description="Regularized self-play preference optimization"
    )
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("game", help="exact tabular self-play on a preference matrix")
    g.add_argument(
        "--game", choices=["rps", "random", "bt"], default="rps",
        help="preference matrix: cyclic (rock-paper-scissors at n = 3), random, Bradley-Terry",
    )  # fmt: skip
    g.add_argument("--n", type=int, default=5, help="number of actions")
    g.add_argument("--regularizer", default="reverse_kl", help="regularizer spec toward π_ref")
    g.add_argument("--tau", type=float, default=0.1, help="regularization strength τ")
    g.add_argument("--eta", type=float, default=1.0, help="step size η of the mirror update")
    g.add_argument("--iters", type=int, default=2000, help="iterations")
    g.add_argument("--seed", type=int, default=0, help="seed of a random or bt game")
    g.add_argument("--every", type=int, default=100, help="report every N iterations")
    g.add_argument("--json", action="store_true", help="one JSON object per line")
    g.add_argument("--plot", default=None, help="save a convergence plot (PNG)")
    g.set_defaults(fn=_cmd_game)

    t = _overridable(sub, "train", "iterative self-play training (resumes an existing run dir)")
    t.add_argument("--config", default=None, help="YAML config (defaults if omitted)")
    t.add_argument("--output", default=None, help="run directory (overrides run.output)")
    t.add_argument("--resume", action="store_true", help="require an existing run to resume")
    t.add_argument("--overwrite", action="store_true", help="delete the run directory first")
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="one training step at the maximum prompt/response length: report peak memory "
        "and step time, write nothing",
    )
    t.set_defaults(fn=_cmd_train)

    c = _overridable(sub, "config", "print the resolved config as YAML")
    c.add_argument("--config", default=None)
    c.set_defaults(fn=_cmd_config)

    d = _overridable(sub, "demo", "SPPO vs RSPO on the embedded gym, with a report")
    d.add_argument(
        "--output", default=None, help="default: runs/demo (runs/demo-quick with --quick)"
    )
    d.add_argument("--quick", action="store_true", help="a ~2 minute smoke version")
    d.add_argument("--overwrite", action="store_true", help="delete the output and start over")
    d.set_defaults(fn=_cmd_demo)

    w = sub.add_parser("sweep", help="grid over objectives x coefficients x seeds, with a report")
    w.add_argument("--config", default=None, help="sweep YAML (default: the packaged gym sweep)")
    w.add_argument("--output", default=None)
    w.add_argument("--parallel", type=int, default=None, help="runs in parallel processes")
    w.add_argument("--quick", action="store_true", help="the packaged quick sweep (CI smoke)")
    w.set_defaults(fn=_cmd_sweep)

    e = _overridable(sub, "eval", "evaluate a model against the reference policy")
    e.add_argument("--model", required=True, help="model directory to evaluate")
    e.add_argument("--config", default=None)
    e.add_argument(
        "--out",
        default=None,
        help="directory for outputs (model_outputs.json); default: <run>/eval/iter_NNN for a "
        "checkpoint of a training run, else <run.output>/eval",
    )
    e.add_argument("--output", default=None, help="run directory (overrides run.output)")
    e.set_defaults(fn=_cmd_eval)

    s = sub.add_parser("select", help="the best evaluated iteration of a run by a metric, as JSON")
    s.add_argument("run_dir", help="a training run's directory (holds metrics.jsonl)")
    s.add_argument("--by", required=True, help="metric of metrics.jsonl, e.g. win_rate")
    s.add_argument("--min", action="store_true", help="lowest value wins (default: highest)")
    s.set_defaults(fn=_cmd_select)

    x = _overridable(
        sub, "export", "a model's answers to benchmark questions, in each benchmark's own format"
    )
    x.add_argument("--model", required=True, help="model directory (a checkpoint), or gym")
    x.add_argument("--out", required=True, help="directory for the answer files")
    x.add_argument("--model-id", default=None, help="name in the answer files (default: "
                   "<run>-iter_NNN for a run's checkpoint, else the directory name)")  # fmt: skip
    x.add_argument("--alpaca-eval", default=None, help="AlpacaEval questions (.json/.jsonl)")
    x.add_argument("--arena-hard", default=None, help="Arena-Hard-Auto question.jsonl")
    x.add_argument("--mt-bench", default=None, help="MT-Bench question.jsonl")
    x.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: evaluation.max_new_tokens")  # fmt: skip
    x.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    x.add_argument("--config", default=None, help="YAML config (model loading, chat template)")
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    x.set_defaults(fn=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rspo`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "game":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from rspo.config import ConfigError
    from rspo.judges.base import JudgeError

    try:
        return args.fn(args, extra)
    except (ConfigError, ValueError, OSError, JudgeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train and demo say how to resume; finished work is on disk
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
