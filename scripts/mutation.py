"""Mutation score of rspo's core (mutmut 3): which small realistic bugs do the tests catch?

mutmut copies ``rspo/`` and ``tests/`` into ``mutants/`` and rewrites each mutated function
into a trampoline that runs the original or one mutant; a mutant runs only the tests that
called its function in a traced run of the module's fast test files (below), and is killed
when one of them fails. This script picks the mutants of each core module (all of them, or
a seeded sample), runs them, prints the score per module and writes the report.

    python scripts/mutation.py                  # sample 30 mutants per module, seed 0
    python scripts/mutation.py --per-module 0   # every mutant (hours on 2 cores)
    python scripts/mutation.py --per-module 0 --modules trainer selfplay.score
                                                # every mutant of the named modules
    python scripts/mutation.py --report-only    # rescore the results in mutants/, no run
    python scripts/mutation.py --per-module 0 --modules evaluation --resume
                                                # an interrupted run: only mutants without
                                                # a result run
    python scripts/mutation.py --per-module 0 --modules game --rerun report_game_all \
        --changed best_response --report report_game_all_after
                                                # that report's survivors again, and every
                                                # mutant of a function edited since
    python scripts/mutation.py --quick          # 2 per module, fails under 90 % (CI runs
                                                # tests/test_mutation_quick.py instead)

Score = killed / (mutants − equivalent): an equivalent mutant (listed with its reason in
benchmarks/results/mutation/equivalent.json) cannot change behaviour, so no test can kill
it. Run it from the repository root; it writes ``mutants/`` (git-ignored) and, unless
``--no-report``, benchmarks/results/mutation/report.{md,json}.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mutation"
EQUIVALENT = RESULTS / "equivalent.json"


@dataclass(frozen=True)
class Module:
    """A core module: its files, optionally only some functions (``file: [names]``), and
    the fast test files whose tests may kill its mutants."""

    files: tuple[str, ...]
    tests: tuple[str, ...]
    functions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: files matched by ``files`` but left out of the core, each with the reason
    exclude: dict[str, str] = field(default_factory=dict)


_JUDGE_IDS = ("judge_id",)
MODULES: dict[str, Module] = {
    "objectives": Module(
        ("rspo/objectives/*.py",),
        (
            "tests/test_objectives_losses.py",
            "tests/test_objectives_first_order.py",
            "tests/test_regularizers.py",
            "tests/test_mutation_objectives.py",
        ),
    ),  # fmt: skip
    "game": Module(
        ("rspo/game/*.py",),
        ("tests/test_game.py", "tests/test_game_convergence.py", "tests/test_mutation_game.py"),
    ),
    "evaluation": Module(
        ("rspo/evaluation/*.py",),
        (
            "tests/test_evaluation_winrate.py",
            "tests/test_evaluation_outputs.py",
            "tests/test_evaluation_length_control.py",
            "tests/test_evaluation_diversity.py",
            "tests/test_overoptimization.py",
            "tests/test_mutation_evaluation.py",
        ),
        exclude={
            "rspo/evaluation/trackers.py": "adapters to wandb/MLflow/TensorBoard run trackers "
            "(logging only, no number of rspo's; tests/test_trackers.py needs the real libraries)",
            "rspo/evaluation/export.py": "writes answers in external benchmarks' file formats "
            "(no statistic of rspo's; tests/test_operations.py)",
        },
    ),  # fmt: skip
    # the score path: when stage_score/stage_generate move out of loop.py, edit this entry
    # only (files, and the functions of each file that belong to the module)
    "selfplay.score": Module(
        ("rspo/selfplay/estimate.py", "rspo/selfplay/score.py", "rspo/selfplay/loop.py"),
        ("tests/test_estimate.py", "tests/test_mutation_score.py"),
        {
            "rspo/selfplay/score.py": (
                "training_set",
                "choose_samples",
                "training_rows",
                "sample_logprobs",
                "reference_rows",
            ),
            "rspo/selfplay/loop.py": ("stage_score", "stage_generate"),
        },
    ),
    "judges": Module(
        (
            "rspo/judges/base.py",
            "rspo/judges/symmetric.py",
            "rspo/judges/cache.py",
            "rspo/judges/reward_model.py",
            "rspo/judges/pairrm.py",
            "rspo/judges/pairwise_lm.py",
            "rspo/judges/python_fn.py",
            "rspo/judges/openai_compat.py",
        ),
        ("tests/test_judges_core.py", "tests/test_mutation_judges.py"),
        {
            f"rspo/judges/{f}.py": _JUDGE_IDS
            for f in ("reward_model", "pairrm", "pairwise_lm", "python_fn", "openai_compat")
        },
    ),  # fmt: skip
    "rundir": Module(
        ("rspo/selfplay/rundir.py",),
        ("tests/test_run_ownership.py", "tests/test_mutation_rundir.py"),
    ),
    "trainer": Module(
        ("rspo/training/trainer.py",),
        ("tests/test_trainer.py", "tests/test_mutation_trainer.py"),
        {"rspo/training/trainer.py": ("accumulate_gradients",)},
    ),
}

_NAME = re.compile(
    r"^(?P<mod>[\w.]+?)\.(?:x_(?P<fn>\w+)|xǁ(?P<cls>\w+)ǁ(?P<meth>\w+))__mutmut_\d+$"
)


def _match(name: str) -> re.Match[str]:
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"unexpected mutant name {name!r}")
    return m


def _parse(name: str) -> tuple[str, str]:
    """``rspo.a.b.x_f__mutmut_3`` -> (``rspo/a/b.py``, ``f``); methods give the method name."""
    m = _match(name)
    return m["mod"].replace(".", "/") + ".py", m["fn"] or m["meth"]


def function_of(name: str) -> str:
    """The mutated function as written in the source: ``f`` or ``Class.method``."""
    m = _match(name)
    return m["fn"] or f"{m['cls']}.{m['meth']}"


def module_of(name: str) -> str | None:
    path, fn = _parse(name)
    for mod, spec in MODULES.items():
        if path in spec.exclude:
            continue
        if any(fnmatch.fnmatch(path, g) for g in spec.files):
            only = spec.functions.get(path)
            if only is None or fn in only:
                return mod
    return None


def _mutmut():
    """mutmut's in-process API (pinned to 3.8 in pyproject's mutation extra)."""
    import mutmut.__main__ as mm
    from mutmut.configuration import config

    also = config().also_copy  # tests compare the code with docs/ (tables stated there)
    if Path("docs") not in also:
        also.append(Path("docs"))
    return mm, config


def generate() -> list[str]:
    """Write mutants/ and return the names of every mutant of the core modules."""
    mm, _ = _mutmut()
    mm.set_mutant_under_test("mutant_generation")
    os.makedirs("mutants", exist_ok=True)
    mm.copy_src_dir()
    mm.copy_also_copy_files()
    mm.setup_source_paths()
    mm.create_mutants(2)
    names = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        names += json.loads(meta.read_text())["exit_code_by_key"]
    return sorted(n for n in names if module_of(n))


def select(names: list[str], per_module: int, seed: int) -> dict[str, list[str]]:
    """Per module: all its mutants (``per_module`` 0) or a seeded sample of that many."""
    by: dict[str, list[str]] = {m: [] for m in MODULES}
    for n in names:
        by[module_of(n)].append(n)  # type: ignore[index]
    if per_module:
        for m, ns in by.items():
            if len(ns) > per_module:
                by[m] = sorted(random.Random(f"{seed}:{m}").sample(ns, per_module))
    return by


def rerun_survivors(
    report: str, chosen: dict[str, list[str]], names: set[str], changed: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """The chosen modules' survivors in a previous report (``REPORT.json``), by name, and
    every mutant of the ``changed`` functions (edited since: their mutants are renumbered)."""
    path = RESULTS / f"{report}.json"
    if not path.exists():
        raise SystemExit(f"--rerun: no report {path}")
    prev = json.loads(path.read_text())["modules"]
    out = {
        m: sorted(
            {n for n in prev[m]["survivors"] if function_of(n) not in changed}
            | {n for n in chosen[m] if function_of(n) in changed}
        )
        for m in chosen
        if m in prev
    }
    gone = sorted(n for ns in out.values() for n in ns if n not in names)
    if gone:
        raise SystemExit(f"--rerun: {len(gone)} survivors of {path.name} are no mutants of "
                         f"the current code (e.g. {gone[0]})")  # fmt: skip
    return out


def run(chosen: dict[str, list[str]], jobs: int) -> None:
    """Run the chosen mutants: union of the modules' test files for the traced stats run,
    then each mutant's tests cut to its own module's files."""
    mm, config = _mutmut()
    cfg = config()
    files = {t for m in chosen for t in MODULES[m].tests}
    cfg.pytest_add_cli_args_test_selection = sorted(t for t in files if Path(t).exists())
    allowed = {
        n: tuple(os.path.basename(t) for t in MODULES[m].tests)
        for m, ns in chosen.items()
        for n in ns
    }
    real = mm.collect_or_load_stats

    def collect_then_cut(*a, **k):
        real(*a, **k)
        st = mm.state()
        for n, files in allowed.items():
            key = mm.mangled_name_from_mutant_name(n)
            tests = st.tests_by_mangled_function_name.get(key, set())
            st.tests_by_mangled_function_name[key] = {
                t for t in tests if os.path.basename(t.split("::")[0]) in files
            }

    mm.collect_or_load_stats = collect_then_cut
    mm._run(sorted(allowed), jobs)


def _results_in_mutants() -> dict[str, int | None]:
    """Each mutant's exit code recorded in mutants/ (None: not run yet)."""
    codes: dict[str, int | None] = {}
    for meta in Path("mutants").rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def results(chosen: dict[str, list[str]]) -> dict[str, dict]:
    from mutmut.stats import status_by_exit_code

    codes = _results_in_mutants()
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    out = {}
    for m, ns in chosen.items():
        not_run = [n for n in ns if codes.get(n) is None]  # an interrupted run: not scored
        ns = [n for n in ns if codes.get(n) is not None]
        status = {n: status_by_exit_code[codes[n]] for n in ns}
        eq = {n: equivalent[n] for n in ns if n in equivalent and status[n] != "killed"}
        live = [n for n in ns if n not in eq]
        killed = sum(status[n] in ("killed", "timeout") for n in live)
        out[m] = {
            "mutants": len(ns),
            "equivalent": len(eq),
            "killed": killed,
            "score": killed / len(live) if live else 1.0,
            "survivors": {n: status[n] for n in live if status[n] not in ("killed", "timeout")},
            "equivalent_mutants": eq,
            "not_run": len(not_run),
        }
    return out


def diff_of(name: str) -> str:
    mm, _ = _mutmut()
    try:
        return mm.get_diff_for_mutant(name, path=mm.find_mutant(name).path)
    except Exception as e:  # noqa: BLE001 - a report line, not a failure
        return f"(no diff: {e})"


def write_report(res: dict[str, dict], args: argparse.Namespace, total: dict[str, int]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = "python scripts/mutation.py" + (
        f" --per-module {args.per_module} --seed {args.seed}"
        if args.per_module
        else " --per-module 0"
    )
    if args.modules:
        cmd += " --modules " + " ".join(args.modules)
    if args.rerun:
        cmd += f" --rerun {args.rerun}"
    if args.changed:
        cmd += " --changed " + " ".join(args.changed)
    (RESULTS / f"{args.report}.json").write_text(
        json.dumps({"command": cmd, "mutants_in_module": total, "modules": res}, indent=1) + "\n"
    )
    lines = [
        "# Mutation score of the core",
        "",
        f"Command: `{cmd}` (mutmut 3.8; sample of each module's mutants, seeded).",
        "A sample whose survivors tests were written for overstates the whole module's "
        "score; docs/testing.md also gives a held-out sample's.",
        "",
        "| module | mutants (of all) | equivalent | killed | score |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, r in res.items():
        lines.append(
            f"| {m} | {r['mutants']} (of {total[m]}) | {r['equivalent']} | {r['killed']} "
            f"| {100 * r['score']:.1f} % |"
        )
    not_run = {m: r["not_run"] for m, r in res.items() if r["not_run"]}
    if not_run:
        lines += ["", "Not run yet (an interrupted run; `--resume` goes on): "
                  + ", ".join(f"{m} {k}" for m, k in not_run.items()) + " mutants."]  # fmt: skip
    excluded = [(f, why) for spec in MODULES.values() for f, why in spec.exclude.items()]
    if excluded:
        lines += ["", "Not in the core (their mutants are not counted):", ""]
        lines += [f"- `{f}`: {why}" for f, why in excluded]
    lines += ["", "## Surviving and equivalent mutants", ""]
    for r in res.values():
        for n, st in {**r["survivors"], **r["equivalent_mutants"]}.items():
            why = r["equivalent_mutants"].get(n)
            lines += [f"### {n}", "", f"{'equivalent: ' + why if why else st}", "", "```diff",
                      diff_of(n).strip(), "```", ""]  # fmt: skip
    (RESULTS / f"{args.report}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-module", type=int, default=30, help="sample size; 0 = all mutants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--modules", nargs="+", choices=list(MODULES), metavar="MODULE",
        help=f"only these core modules (default: all of {', '.join(MODULES)})",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="CI: 2 per module, seed 0, no report")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--min-score", type=float, default=0.9)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--report", default="report", help="report file name (.md/.json), no suffix")
    ap.add_argument("--fresh", action="store_true", help="delete mutants/ first")
    ap.add_argument(
        "--rerun", metavar="REPORT",
        help="run only the survivors listed in benchmarks/results/mutation/REPORT.json "
        "(a report name): measures the tests written for them. Names are matched to the "
        "current code, so a function changed since then renumbers its mutants",
    )  # fmt: skip
    ap.add_argument(
        "--report-only", action="store_true",
        help="no run: score and report the results already in mutants/ for this sample",
    )  # fmt: skip
    ap.add_argument(
        "--resume", action="store_true",
        help="run only the chosen mutants without a result in mutants/ (an interrupted run "
        "goes on; the report covers them all)",
    )  # fmt: skip
    ap.add_argument(
        "--changed", nargs="+", default=[], metavar="FUNCTION",
        help="with --rerun: functions edited since that report (f or Class.method), whose "
        "mutants all run instead of its survivors",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.changed and not args.rerun:
        ap.error("--changed needs --rerun")
    if args.resume and args.fresh:
        ap.error("--resume keeps the results in mutants/; --fresh deletes them")
    if args.quick:
        args.per_module, args.seed, args.no_report = 2, 0, True
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.fresh or args.quick:
        shutil.rmtree("mutants", ignore_errors=True)
    t0 = time.perf_counter()
    names = generate()
    chosen = select(names, args.per_module, args.seed)
    if args.modules:
        chosen = {m: ns for m, ns in chosen.items() if m in args.modules}
    total = {m: sum(module_of(n) == m for n in names) for m in chosen}
    if args.rerun:
        chosen = rerun_survivors(args.rerun, chosen, set(names), tuple(args.changed))
    if args.resume:
        done = _results_in_mutants()
        todo = {m: [n for n in ns if done.get(n) is None] for m, ns in chosen.items()}
        print(f"--resume: {sum(map(len, todo.values()))} of {sum(map(len, chosen.values()))} "
              "mutants have no result yet")  # fmt: skip
    else:
        todo = chosen
    if not args.report_only and any(todo.values()):
        try:
            run(todo, args.jobs)
        except SystemExit as e:
            if e.code:
                raise
    res = results(chosen)
    print(f"\nmutation score per module ({time.perf_counter() - t0:.0f}s)")
    ok = True
    for m, r in res.items():
        flag = r["score"] >= args.min_score
        ok &= flag
        tail = f"  ({r['not_run']} not run yet)" if r["not_run"] else ""
        print(f"  {m:15s} {r['killed']:3d}/{r['mutants'] - r['equivalent']:3d} killed "
              f"({r['equivalent']} equivalent, of {total[m]})  {100 * r['score']:5.1f} %"
              f"{'' if flag else '  < target'}{tail}")  # fmt: skip
        for n, st in r["survivors"].items():
            print(f"      {st}: {n}")
    if not args.no_report:
        write_report(res, args, total)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
