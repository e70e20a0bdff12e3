"""Judge interface, registry, python judge, order-swap averaging, batching and the cache."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from rspo.judges import (
    CachedJudge,
    Judge,
    JudgeError,
    JudgementCache,
    SymmetricJudge,
    available_judges,
    batched_prefer,
    build_judge,
    chunk_slices,
    symmetric_prefer,
)
from rspo.judges.python_fn import PythonJudge

P = ["p1", "p1", "p2", "p3", "p3"]
A = ["long answer", "x", "abc", "yy", "same"]
B = ["short", "xxxxxx", "ab", "yyy", "same"]


def length_pref(prompt: str, a: str, b: str) -> float:
    """Symmetric toy judge: the longer response wins with probability 0.8."""
    return 0.5 + 0.3 * ((len(a) > len(b)) - (len(a) < len(b)))


class Counting(Judge):
    """Wraps a per-pair function and records every prefer() call (for call-count checks)."""

    def __init__(self, fn, order_sensitive: bool = False) -> None:
        self.fn = fn
        self.order_sensitive = order_sensitive
        self.calls: list[int] = []

    @property
    def judge_id(self) -> str:
        return "counting"

    def _prefer(self, prompts, a, b):
        self.calls.append(len(prompts))
        return [self.fn(*t) for t in zip(prompts, a, b)]


def biased(prompt: str, a: str, b: str) -> float:
    """Position-biased judge: +0.1 for whatever is shown first, ±0.2 for length."""
    return 0.6 + 0.2 * ((len(a) > len(b)) - (len(a) < len(b)))


# -- registry and validation -------------------------------------------------------


def test_registry_lists_builtins_and_rejects_unknown():
    names = available_judges()
    for n in ("python", "reward_model", "pairwise_lm", "openai", "pairrm"):
        assert n in names
    with pytest.raises(ValueError, match="unknown judge 'nope'.*python"):
        build_judge("nope")
    with pytest.raises(ValueError, match="valid settings: fn, batched"):
        build_judge("python", fn=length_pref, bogus=1)


def test_python_judge_from_callable():
    j = build_judge("python", fn=length_pref)
    assert j.prefer(P, A, B) == [0.8, 0.2, 0.8, 0.2, 0.5]
    assert j.prefer([], [], []) == []
    assert not j.order_sensitive
    assert "length_pref" in j.judge_id and "length_pref" in repr(j)


@pytest.mark.parametrize(
    "bad, match",
    [
        (float("nan"), r"nan.*\[0, 1\]"),
        (1.5, r"1\.5.*\[0, 1\]"),
        (-0.1, r"-0\.1.*\[0, 1\]"),
        ("high", "expected a number"),
    ],
)
def test_validation_rejects_non_probabilities(bad, match):
    j = PythonJudge(lambda p, a, b: bad)
    with pytest.raises(JudgeError, match=match):
        j.prefer(["q"], ["a"], ["b"])


def test_validation_wrong_counts():
    j = PythonJudge(lambda ps, a, b: [0.5] * (len(ps) - 1), batched=True)
    with pytest.raises(JudgeError, match="returned 2 results for 3 pairs"):
        j.prefer(["q"] * 3, ["a"] * 3, ["b"] * 3)
    with pytest.raises(ValueError, match="equal lengths, got 2, 1, 2"):
        j.prefer(["q", "r"], ["a"], ["b", "c"])


def test_python_judge_errors_are_wrapped():
    def boom(p, a, b):
        raise KeyError("missing")

    with pytest.raises(JudgeError, match="raised KeyError on pair 0"):
        PythonJudge(boom).prefer(["q"], ["a"], ["b"])


def test_python_judge_from_string_specs(tmp_path, monkeypatch):
    mod = tmp_path / "my_judge_mod.py"
    mod.write_text("def fn(prompt, a, b, bonus=0.0):\n    return 0.25 + bonus\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    j = build_judge("python", fn="my_judge_mod:fn", kwargs={"bonus": 0.5})
    assert j.prefer(["q"], ["a"], ["b"]) == [0.75]
    assert "my_judge_mod:fn" in j.judge_id and "bonus" in j.judge_id
    j2 = build_judge("python", fn=f"{mod}:fn")  # a file path works too
    assert j2.prefer(["q"], ["a"], ["b"]) == [0.25]


@pytest.mark.parametrize(
    "spec, exc, match",
    [
        ("no_such_module_rspo_xyz:f", JudgeError, "could not import 'no_such_module_rspo_xyz'"),
        ("json:no_such_function", JudgeError, "'json' has no attribute 'no_such_function'"),
        ("json:__name__", JudgeError, "not a callable"),
        ("json.dumps", ValueError, "must look like 'package.module:function'"),
        ("/nonexistent/x.py:f", JudgeError, "no such file"),
    ],
)
def test_python_judge_bad_specs(spec, exc, match):
    with pytest.raises(exc, match=match):
        build_judge("python", fn=spec)


def test_python_judge_id_changes_with_code():
    j1 = PythonJudge(lambda p, a, b: 0.1)
    j2 = PythonJudge(lambda p, a, b: 0.2)
    assert j1.judge_id != j2.judge_id
    assert PythonJudge(length_pref, version="v2").judge_id.endswith("version=v2]")
    # a changed call (only co_names differ) and a changed default are other judges
    assert PythonJudge(lambda p, a, b: float(max(a, b) == a)).judge_id != (
        PythonJudge(lambda p, a, b: float(min(a, b) == a)).judge_id
    )
    assert PythonJudge(lambda p, a, b, t=1: 0.5).judge_id != (
        PythonJudge(lambda p, a, b, t=2: 0.5).judge_id
    )


def test_python_judge_id_is_the_same_in_every_process(tmp_path):
    """A comprehension or generator is a nested code object whose repr holds an address:
    hashing that gave every process another cache key (no hits across a resume)."""
    import subprocess
    import sys

    (tmp_path / "myjudge.py").write_text(
        "def judge(p, a, b):\n"
        "    return float(sum(1 for w in a.split()) > sum(1 for w in b.split()))\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from rspo.judges import build_judge; "
        "print(build_judge('python', fn='myjudge:judge').judge_id)"
    )
    ids = {
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(ids) == 1 and "code=" in ids.pop()


# -- order swap and batching -------------------------------------------------------


def test_symmetric_prefer_hand_computed_and_one_call():
    inner = Counting(biased, order_sensitive=True)
    # raw judge: shown-first bias means P(a≻b) + P(b≻a) != 1
    assert inner.prefer(["q"], ["long"], ["s"])[0] + inner.prefer(["q"], ["s"], ["long"])[0] == (
        pytest.approx(1.2)
    )
    inner.calls.clear()
    ps = symmetric_prefer(inner, P, A, B)
    assert inner.calls == [2 * len(P)]  # both orders in ONE batched call
    # longer a: ½(0.8 + 1 − 0.4) = 0.7; shorter a: ½(0.4 + 1 − 0.8) = 0.3; equal: ½(0.6 + 0.4)
    assert ps == pytest.approx([0.7, 0.3, 0.7, 0.3, 0.5])
    rev = symmetric_prefer(inner, P, B, A)
    assert [x + y for x, y in zip(ps, rev)] == pytest.approx([1.0] * len(P))


def test_symmetric_prefer_skips_second_order_for_symmetric_judges():
    inner = Counting(length_pref)
    assert symmetric_prefer(inner, P, A, B) == [0.8, 0.2, 0.8, 0.2, 0.5]
    assert inner.calls == [len(P)]
    symmetric_prefer(inner, P, A, B, both_orders=True)
    assert inner.calls[-1] == 2 * len(P)


def test_symmetric_judge_wrapper():
    inner = Counting(biased, order_sensitive=True)
    sym = SymmetricJudge(inner)
    assert not sym.order_sensitive and sym.judge_id == "symmetric(counting)"
    assert sym.prefer(P, A, B) == pytest.approx([0.7, 0.3, 0.7, 0.3, 0.5])
    passthrough = SymmetricJudge(inner, both_orders=False)
    assert passthrough.order_sensitive and passthrough.judge_id == "counting"


def test_batching_invariance_and_chunks():
    assert [(s.start, s.stop) for s in chunk_slices(7, 3)] == [(0, 3), (3, 6), (6, 7)]
    assert list(chunk_slices(0, 3)) == []
    with pytest.raises(ValueError):
        list(chunk_slices(3, 0))
    inner = Counting(biased, order_sensitive=True)
    prompts, a, b = P * 3, A * 3, B * 3
    one = batched_prefer(inner, prompts, a, b, batch_size=1)
    assert inner.calls == [1] * 15
    inner.calls.clear()
    seven = batched_prefer(inner, prompts, a, b, batch_size=7)
    assert inner.calls == [7, 7, 1]
    assert one == seven == inner.prefer(prompts, a, b)


# -- cache ---------------------------------------------------------------------------


def test_cache_hits_and_reload_from_disk(tmp_path):
    path = tmp_path / "cache" / "judgements.sqlite"
    inner = Counting(biased, order_sensitive=True)
    cj = CachedJudge(inner, path, batch_size=2)
    assert cj.order_sensitive and cj.judge_id == "counting"
    first = cj.prefer(P, A, B)
    assert first == [biased(*t) for t in zip(P, A, B)]
    assert inner.calls == [2, 2, 1]  # misses sent in batch_size chunks
    assert cj.stats == {"hits": 0, "misses": 5, "inner_pairs": 5, "inner_calls": 3}
    inner.calls.clear()
    assert cj.prefer(P, A, B) == first
    assert inner.calls == [] and cj.stats["hits"] == 5

    # order matters in the key: swapped pairs are new judgements (except a == b)
    cj.prefer(P, B, A)
    assert sum(inner.calls) == 4

    # a fresh instance (as in a new process) reads the file; duplicates asked once
    inner2 = Counting(biased, order_sensitive=True)
    cj2 = CachedJudge(inner2, str(path))
    assert cj2.prefer(P + ["new", "new"], A + ["n1", "n1"], B + ["n2", "n2"])[:5] == first
    assert inner2.calls == [1]
    assert cj2.stats["hits"] == 5 and cj2.stats["misses"] == 2
    assert len(cj2.cache) == 10 and cj2.cache.count("counting") == 10


def test_cache_separates_judges_and_symmetric_on_top(tmp_path):
    cache = JudgementCache(tmp_path / "c.sqlite")
    j1 = CachedJudge(PythonJudge(lambda p, a, b: 0.1), cache)
    j2 = CachedJudge(PythonJudge(lambda p, a, b: 0.9), cache)
    assert j1.prefer(["q"], ["a"], ["b"]) == [0.1]
    assert j2.prefer(["q"], ["a"], ["b"]) == [0.9]  # different judge_id, no collision
    inner = Counting(biased, order_sensitive=True)
    cj = CachedJudge(inner, cache)
    symmetric_prefer(cj, P, A, B)
    symmetric_prefer(cj, P, B, A)  # the same order-specific judgements, all cached
    assert inner.calls == [9]  # 10 pairs, ("same", "same") twice: asked once


def test_cache_survives_kill_mid_write(tmp_path):
    path = tmp_path / "crash.sqlite"
    script = textwrap.dedent(
        f"""
        from rspo.judges import CachedJudge
        from rspo.judges.python_fn import PythonJudge
        cj = CachedJudge(PythonJudge(lambda p, a, b: 0.25), {str(path)!r}, batch_size=500)
        i = 0
        while True:
            n = 2000
            cj.prefer([str(i)] * n, [str(k) for k in range(n)], ["b"] * n)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        rows = 0
        while time.monotonic() < deadline and rows < 3000:
            time.sleep(0.1)
            if path.exists():
                try:
                    with sqlite3.connect(path, timeout=5) as c:
                        rows = c.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
                except sqlite3.OperationalError:
                    rows = 0
        assert rows >= 3000, "writer made no progress"
    finally:
        proc.kill()  # SIGKILL: no cleanup, possibly mid-transaction
        proc.wait(timeout=10)
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n, bad = c.execute("SELECT COUNT(*), SUM(p != 0.25) FROM judgements").fetchone()
    assert n >= rows and n % 500 == 0 and bad == 0  # only whole committed chunks
    cache = JudgementCache(path)
    assert len(cache) == n


# -- pairrm ------------------------------------------------------------------------------


def test_pairrm_missing_dependency_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_blender", None)  # import fails as if absent
    with pytest.raises(JudgeError) as e:
        build_judge("pairrm")
    msg = str(e.value)
    assert "pip install 'rspo[pairrm]'" in msg and "transformers>=5" in msg


def test_pairrm_with_stub_blender(monkeypatch):
    import types

    class Blender:
        def loadranker(self, model, device):
            self.loaded = (model, device)

        def compare(self, inputs, a, b, batch_size, return_logits, mode):
            assert return_logits and mode == "[A,B]+[B,A]"
            return [float(len(x) - len(y)) for x, y in zip(a, b)]

    monkeypatch.setitem(sys.modules, "llm_blender", types.SimpleNamespace(Blender=Blender))
    j = build_judge("pairrm", model="/models/pairrm", device="cpu", temperature=2.0)
    assert j.blender.loaded == ("/models/pairrm", "cpu") and not j.order_sensitive
    ps = j.prefer(["q", "q"], ["abcd", "a"], ["ab", "a"])
    assert ps == pytest.approx([1 / (1 + math.exp(-1.0)), 0.5])


def test_a_batched_python_judge_returning_a_scalar_is_named():
    judge = PythonJudge(lambda p, a, b: 0.5, batched=True)
    with pytest.raises(JudgeError, match=r"\(batched\) returned 0\.5; expected one number per"):
        judge.prefer(["q"], ["a"], ["b"])


def test_python_judge_id_covers_sets_closures_and_partials(tmp_path):
    """A set literal's order follows PYTHONHASHSEED (the key changed per process); a value a
    factory closed over, or a partial's bound argument, changes the judge."""
    import functools
    import os
    import subprocess
    import sys

    (tmp_path / "setjudge.py").write_text(
        "def judge(p, a, b):\n    return float(a in {'yes', 'sure', 'ok', 'fine', 'good'})\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from rspo.judges import build_judge; "
        "print(build_judge('python', fn='setjudge:judge').judge_id)"
    )
    ids = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True
        )
        ids.add(out.stdout)
    assert len(ids) == 1

    def make(threshold):
        return lambda p, a, b: float(len(a) - len(b) > threshold)

    assert PythonJudge(make(2.0)).judge_id != PythonJudge(make(3.0)).judge_id

    def scaled(p, a, b, scale=1.0):
        return 0.5 * scale

    one, two = functools.partial(scaled, scale=1.0), functools.partial(scaled, scale=2.0)
    assert PythonJudge(one).judge_id != PythonJudge(two).judge_id
    assert "nocode" not in PythonJudge(one).judge_id
