"""Shared helpers of the benchmark scripts: machine description, timing, tables, reports.

Every script benchmarks the checkout it lives in (the repository root goes first on
``sys.path`` and into the workers' ``PYTHONPATH``), runs one torch thread by default and
records the load average at start and end, because the machines they run on are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "perf"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: environment of every worker subprocess: offline hub, one BLAS thread, this checkout first
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def setup_env(threads: int) -> None:
    """Offline hub, quiet transformers, ``threads`` torch threads (call before heavy work)."""
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, Python/torch/transformers versions and torch's thread count."""
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def med(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(xs))


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; else the peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class StageTimer:
    """Accumulates wall-clock seconds under named keys."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        """The accumulated seconds, then reset."""
        out, self.seconds = self.seconds, {}
        return out


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get 3 significant decimals."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def base_parser(description: str, default_repeats: int) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --quick, --repeats, --json, --threads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="tiny settings (CI smoke run)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"repeats per measurement (default {default_repeats}, quick 1)",
    )
    ap.add_argument("--json", default=None, help="write results here (and a .md table next to it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return ap


def repeats(args: argparse.Namespace, default: int) -> int:
    """--repeats, else 1 in quick mode, else ``default``."""
    n = args.repeats if args.repeats is not None else (1 if args.quick else default)
    if n < 1:
        raise SystemExit("--repeats must be >= 1")
    return n


class Report:
    """One benchmark's output: machine, load, settings, tables, ratios; printed and saved."""

    def __init__(self, name: str, argv: Sequence[str], settings: dict[str, Any]) -> None:
        self.data: dict[str, Any] = {
            "benchmark": name,
            "command": " ".join(["python", f"benchmarks/{name}.py", *argv]),
            "machine": machine_info(),
            "load_start": loadavg(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "settings": settings,
            "results": {},
            "ratios": {},
            "tables": {},
            "notes": [],
        }

    def table(
        self, key: str, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Add a table (kept as rows in ``results[key]`` and as Markdown)."""
        self.data["results"][key] = [dict(zip(headers, r)) for r in rows]
        self.data["tables"][key] = f"**{title}**\n\n{md_table(headers, rows)}"

    def ratio(self, key: str, num: float, den: float, what: str, target: str = "") -> float:
        """Record ``num / den`` with both operands, so readers can recompute it."""
        value = num / den
        self.data["ratios"][key] = {
            "value": value,
            "numerator": num,
            "denominator": den,
            "what": what,
            "target": target,
        }
        return value

    def note(self, text: str) -> None:
        """A free-text remark printed under the tables."""
        self.data["notes"].append(text)

    def markdown(self) -> str:
        """Everything as Markdown (the printed output and the .md file)."""
        d = self.data
        m = d["machine"]
        lines = [
            f"## {d['benchmark']}",
            "",
            f"`{d['command']}` — {d['started']}",
            "",
            f"Machine: {m['cpu']}, {m['logical_cores']} logical cores "
            f"({m['usable_cores']} usable), "
            f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
            f"torch threads {m['torch_threads']}. Load average (1/5/15 min) at start "
            f"{d['load_start']}, at end {d.get('load_end', [])} (shared machine: other jobs "
            "were running).",
            "",
        ]
        for t in d["tables"].values():
            lines += [t, ""]
        if d["ratios"]:
            lines.append("Ratios (measured in this run):")
            lines.append("")
            for k, r in d["ratios"].items():
                tgt = f" (target {r['target']})" if r["target"] else ""
                lines.append(
                    f"- `{k}` = {r['value']:.2f} = {r['numerator']:.4g} / {r['denominator']:.4g}: "
                    f"{r['what']}{tgt}"
                )
            lines.append("")
        for n in d["notes"]:
            lines.append(f"- {n}")
        return "\n".join(lines).rstrip() + "\n"

    def finish(self, json_path: str | None) -> dict[str, Any]:
        """Record the end load, print the Markdown, write JSON (+ .md) if asked."""
        self.data["load_end"] = loadavg()
        text = self.markdown()
        print(text)
        if json_path:
            p = Path(json_path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(self.data, indent=2) + "\n")
            p.with_suffix(".md").write_text(text)
        return self.data


def run_worker(
    python: str,
    script: Path,
    args: Sequence[str],
    timeout: float = 1800.0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python script --worker-out FILE args`` in a fresh process (``env`` added to its
    environment); return FILE's JSON."""
    import tempfile

    env = {**os.environ, **WORKER_ENV, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix="rspo-bench-") as tmp:
        out = Path(tmp) / "worker.json"
        cmd = [python, str(script), "--worker-out", str(out), *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"worker failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}"
            )
        return json.loads(out.read_text())


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r
