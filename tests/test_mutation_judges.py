"""Every constructor setting of every judge is part of its ``judge_id``: a shared cache
keyed by it must never serve a verdict computed under another setting. The judges are
built without loading a model (their attributes set as their constructors set them), and
each id is checked exactly, then for a change under every single setting."""

from __future__ import annotations

import pytest

from rspo.judges.base import Judge
from rspo.judges.openai_compat import OpenAIJudge
from rspo.judges.pairrm import PairRMJudge
from rspo.judges.pairwise_lm import PairwiseLMJudge
from rspo.judges.python_fn import PythonJudge
from rspo.judges.reward_model import RewardModelJudge


def _bare(cls, **attrs):
    j = object.__new__(cls)
    j.__dict__.update(attrs)
    return j


RM = dict(
    model_path="m", _fingerprint="f", temperature=1.0, max_length=512, use_chat_template=True,
    separator="\n", label_index=0, _dtype_name="float32",
)  # fmt: skip
PLM = dict(
    model_path="m", _fingerprint="f", template="T {prompt}", answer_prefix="A:",
    system_prompt=None, choices=("A", "B"), temperature=1.0, max_length=512,
    use_chat_template=False, _dtype_name="float32",
)  # fmt: skip
PAIRRM = dict(model_path="m", temperature=1.0, mode="[A,B]")
OPENAI = dict(
    base_url="http://x/v1", model="m", template="T", system_prompt=None, choices=("A", "B"),
    logprobs=True, top_logprobs=5, temperature=0.0, max_tokens=1, on_unparseable="tie",
    extra_body={},
)  # fmt: skip
OTHER = {
    "model_path": "m2", "_fingerprint": "g", "temperature": 2.0, "max_length": 256,
    "use_chat_template": None, "separator": " ", "label_index": 1, "_dtype_name": "bfloat16",
    "template": "U {prompt}", "answer_prefix": "B:", "system_prompt": "be fair",
    "choices": ("1", "2"), "mode": "[A,B]+[B,A]", "base_url": "http://y/v1", "model": "m2",
    "logprobs": False, "top_logprobs": 2, "max_tokens": 2, "on_unparseable": "raise",
    "extra_body": {"seed": 1},
}  # fmt: skip


def test_reward_model_id_exact():
    assert _bare(RewardModelJudge, **RM).judge_id == (
        "reward_model[model=m,fp=f,T=1.0,max_length=512,chat=True,sep='\\n',label=0,dtype=float32]"
    )


def test_pairwise_lm_and_pairrm_ids_exact():
    jid = _bare(PairwiseLMJudge, **PLM).judge_id
    assert jid.startswith("pairwise_lm[model=m,fp=f,template=") and jid.endswith(
        ",choices=['A', 'B'],T=1.0,max_length=512,chat=False,dtype=float32]"
    )
    assert _bare(PairRMJudge, **PAIRRM).judge_id == "pairrm[model=m,T=1.0,mode=[A,B]]"
    assert _bare(OpenAIJudge, **OPENAI).judge_id.startswith(
        "openai[url=http://x/v1,model=m,settings="
    )


@pytest.mark.parametrize(
    "cls,base", [(RewardModelJudge, RM), (PairwiseLMJudge, PLM), (PairRMJudge, PAIRRM),
                 (OpenAIJudge, OPENAI)],
    ids=["reward_model", "pairwise_lm", "pairrm", "openai"],
)  # fmt: skip
def test_every_setting_changes_the_judge_id(cls, base):
    ids = {_bare(cls, **base).judge_id}
    for key in base:
        ids.add(_bare(cls, **{**base, key: OTHER[key]}).judge_id)
    assert len(ids) == len(base) + 1  # each setting alone gives an id of its own


def _fn(prompt, a, b, **kw):
    return 0.5


def test_python_judge_id_names_every_setting():
    base = PythonJudge(_fn)
    ids = [
        base.judge_id,
        PythonJudge(_fn, batched=True).judge_id,
        PythonJudge(_fn, kwargs={"x": 1}).judge_id,
        PythonJudge(_fn, version="2").judge_id,
    ]
    assert len(set(ids)) == 4
    assert ids[0].startswith("python[fn=") and ",code=" in ids[0] and ids[0].endswith("]")
    assert ids[1].endswith(",batched]") and ids[2].endswith(',kwargs={"x": 1}]')
    assert ids[3].endswith(",version=2]")


def test_cache_close_closes_its_connection_and_pickling_keeps_path_and_timeout(tmp_path):
    import pickle
    import sqlite3

    from rspo.judges.cache import JudgementCache

    c = JudgementCache(tmp_path / "c.sqlite", timeout=7.5)
    c.put_many("j", {"k": 0.25})
    conn = c._conn
    c.close()
    with pytest.raises(sqlite3.ProgrammingError):  # closed, not only forgotten
        conn.execute("SELECT 1")
    d = pickle.loads(pickle.dumps(c))
    assert (d.path, d.timeout, d.count("j")) == (c.path, 7.5, 1)


def test_a_credential_setting_is_refused_with_the_reason():
    from rspo.judges.base import build_judge

    with pytest.raises(ValueError, match="are saved with the run's config, so secrets do not"):
        build_judge("python", fn="x:y", extra={"api_key": "sk"})


def test_a_credential_after_an_env_setting_is_still_refused():
    """An ``*_env`` setting names a variable (no secret) and is skipped; the settings after
    it are still checked, at the top level and nested."""
    from rspo.judges.base import _check_no_secrets

    _check_no_secrets("j", {"api_key_env": "V", "header_env": {"X-Api-Key": "V"}})  # fine
    with pytest.raises(ValueError) as e:
        _check_no_secrets("j", {"api_key_env": "V", "token": "t"})
    assert str(e.value).startswith("judge 'j': setting 'token' looks like a credential; ")
    with pytest.raises(ValueError) as e:
        _check_no_secrets("j", {"extra": {"url_env": "U", "Authorization": "Bearer x"}})
    assert str(e.value).startswith(
        "judge 'j': setting 'extra.Authorization' looks like a credential; settings are saved "
        "with the run's config, so secrets do not belong there."
    )


def test_judgement_keys_are_stable_across_releases():
    """Cache keys are persistent (a shared cache outlives rspo versions): the sha256 of the
    UTF-8 JSON list, non-ASCII text kept as is (not \\u-escaped). Pinned values."""
    from rspo.judges import judgement_key

    assert judgement_key("jid", "p", "a", "b") == (
        "1d61756ebf8e0f340e05f72027a7430ce5d77a60d20ff54feb7561e5038680c3"
    )
    assert judgement_key("jid", "Grüße", "naïve — ja", "日本") == (
        "283743637184604b2ea645964910a9bf7b676241e15846f025a77eabdf65dc0d"
    )
    assert judgement_key("jid", "p", "b", "a") != judgement_key("jid", "p", "a", "b")


# ----------------------------------------------------------------- base: classes and errors
def test_a_judge_class_with_settings_but_no_judge_id_is_refused_naming_its_settings():
    from rspo.judges.base import Judge, _check_judge_id

    class Sized(Judge):
        def __init__(self, size, temperature=1.0):
            self.size, self.temperature = size, temperature

        def _prefer(self, prompts, a, b):
            return [0.5] * len(prompts)

    with pytest.raises(ValueError) as e:
        _check_judge_id(Sized)
    msg = str(e.value)
    assert f"{Sized.__module__}.{Sized.__qualname__} takes settings (size, temperature)" in msg
    assert "does not define judge_id" in msg and "judgement cache" in msg

    class NoSettings(Judge):  # nothing to key on: the name alone is a sound id
        def _prefer(self, prompts, a, b):
            return [0.5] * len(prompts)

    class OnlySelf(NoSettings):
        def __init__(self):
            pass

    class WithId(Sized):
        @property
        def judge_id(self):
            return f"sized[{self.size}]"

    for ok in (NoSettings, OnlySelf, WithId, _fn):  # _fn: a factory, not a class
        _check_judge_id(ok)


def _ns_judge(module_name, tmp_path, monkeypatch, body):
    (tmp_path / f"{module_name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_module_class_judge_is_built_named_and_checked(tmp_path, monkeypatch):
    from rspo.judges.base import build_judge

    _ns_judge(
        "my_judges_mut", tmp_path, monkeypatch,
        "from rspo.judges.base import Judge\n"
        "class Half(Judge):\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [0.5] * len(p)\n"
        "class NotAJudge:\n"
        "    pass\n",
    )  # fmt: skip
    j = build_judge("my_judges_mut:Half")
    assert j.name == "my_judges_mut:Half" and j.judge_id == "my_judges_mut:Half"
    assert j.prefer(["p"], ["a"], ["b"]) == [0.5]
    with pytest.raises(ValueError) as e:
        build_judge("my_judges_mut:NotAJudge")
    assert str(e.value).startswith("judge 'my_judges_mut:NotAJudge': <class ")
    assert "is not a Judge subclass (subclass rspo.Judge and implement _prefer)" in str(e.value)
    with pytest.raises(ValueError) as e:  # load_callable's errors name the judge setting
        build_judge("my_judges_mut:Missing")
    assert str(e.value).startswith("judge 'my_judges_mut:Missing'")
    with pytest.raises(ValueError) as e:  # a setting the class does not take
        build_judge("my_judges_mut:Half", size=3)
    assert "judge 'my_judges_mut:Half':" in str(e.value) and "valid settings: (none)" in str(
        e.value
    )


def test_build_judge_errors_name_the_judge_and_the_choices():
    from rspo.judges.base import available_judges, build_judge

    with pytest.raises(ValueError) as e:
        build_judge("no_such_judge")
    assert str(e.value) == (
        f"unknown judge 'no_such_judge'; valid judges: {', '.join(available_judges())}, or "
        "'module:Class' for a Judge subclass in your code"
    )
    with pytest.raises(ValueError) as e:
        build_judge("python", fn="x:y", nonsense=1)
    msg = str(e.value)
    assert msg.startswith("judge 'python': ") and "valid settings: fn, " in msg
    with pytest.raises(ValueError) as e:  # a credential nested in a mapping: its full path
        build_judge("python", fn="x:y", kwargs={"auth": {"Authorization": "Bearer x"}})
    assert "setting 'kwargs.auth.Authorization' looks like a credential" in str(e.value)
    # names of environment variables are fine at any depth
    from rspo.judges.base import _check_no_secrets

    _check_no_secrets("openai", {"api_key_env": "K", "header_env": {"X_TOKEN_ENV": "V"}})


def test_register_judge_names_the_class_and_refuses_a_second_factory():
    from rspo.judges.base import _REGISTRY, Judge, register_judge

    class A(Judge):
        def _prefer(self, p, a, b):
            return [1.0] * len(p)

    try:
        assert register_judge("mut_test_a")(A) is A and A.name == "mut_test_a"
        assert register_judge("mut_test_a")(A) is A  # the same factory again: fine
        with pytest.raises(ValueError, match="judge name 'mut_test_a' is already registered"):
            register_judge("mut_test_a")(lambda: A())
        assert _REGISTRY["mut_test_a"] is A
    finally:
        _REGISTRY.pop("mut_test_a", None)


def test_prefer_validates_and_names_the_judge_pair_and_prompt():
    from rspo.judges.base import JudgeError

    assert Fixed([0.0, 1.0]).prefer(["p", "q"], ["a", "b"], ["c", "d"]) == [0.0, 1.0]
    assert Fixed(None).prefer([], [], []) == []  # no call for no pairs
    with pytest.raises(ValueError) as e:
        Fixed([0.5]).prefer(["p"], ["a", "b"], ["c"])
    assert str(e.value) == (
        "judge 'fixed': prompts, responses_a, responses_b must have equal lengths, got 1, 2, 1"
    )
    with pytest.raises(JudgeError) as e:
        Fixed([0.5]).prefer(["p", "q"], ["a", "b"], ["c", "d"])
    assert str(e.value) == "judge 'fixed' (fixed[[0.5]]) returned 1 results for 2 pairs"
    with pytest.raises(JudgeError) as e:
        Fixed([0.5, 1.5]).prefer(["p", "q" * 100], ["a", "b"], ["c", "d"])
    assert str(e.value) == (
        f"judge 'fixed' (fixed[[0.5, 1.5]]) returned 1.5 for pair 1 (prompt {'q' * 60!r}); "
        "a preference probability must lie in [0, 1]"
    )
    for bad in ([-0.0001], [float("nan")], [1.0000001]):
        with pytest.raises(JudgeError, match="for pair 0"):
            Fixed(bad).prefer(["p"], ["a"], ["b"])
    with pytest.raises(
        JudgeError, match=r"^judge 'fixed' \(fixed\[\['x'\]\]\) returned a non-number"
    ):
        Fixed(["x"]).prefer(["p"], ["a"], ["b"])
    assert repr(Fixed([1])) == "Fixed('fixed[[1]]')"


class Fixed(Judge):
    """A judge returning ``out`` as its verdicts, whatever it is asked."""

    name = "fixed"

    def __init__(self, out):
        self.out = out

    @property
    def judge_id(self):
        return f"fixed[{self.out!r}]"

    def _prefer(self, p, a, b):
        return self.out


def test_batched_prefer_names_the_three_lengths():
    from rspo.judges.symmetric import batched_prefer

    assert batched_prefer(Fixed([0.25]), ["p"], ["a"], ["b"], None) == [0.25]
    with pytest.raises(ValueError) as e:
        batched_prefer(Fixed([0.5]), ["p"], ["a", "b"], ["c"], 1)
    assert str(e.value) == (
        "prompts, responses_a, responses_b must have equal lengths, got 1, 2, 1"
    )
    with pytest.raises(ValueError) as e:
        batched_prefer(Fixed([0.5]), ["p", "q"], ["a", "b"], ["c"], None)
    assert str(e.value).endswith("got 2, 2, 1")


def test_symmetric_wrapper_keeps_the_judges_name_in_its_messages():
    from rspo.judges.base import JudgeError
    from rspo.judges.symmetric import SymmetricJudge

    sym = SymmetricJudge(Fixed([1.5]), both_orders=False)
    assert sym.name == "fixed" and sym.judge_id == "fixed[[1.5]]"
    with pytest.raises(JudgeError) as e:
        sym.prefer(["p"], ["a"], ["b"])
    assert str(e.value) == (
        "judge 'fixed' (fixed[[1.5]]) returned 1.5 for pair 0 (prompt 'p'); "
        "a preference probability must lie in [0, 1]"
    )


def test_chunk_slices_are_consecutive_and_bounded():
    from rspo.judges.base import chunk_slices

    assert list(chunk_slices(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(chunk_slices(4, None)) == [slice(0, 4)]
    assert list(chunk_slices(0, None)) == [] and list(chunk_slices(3, 1))[-1] == slice(2, 3)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        list(chunk_slices(3, 0))


# ----------------------------------------------------------------- cache
def test_cache_creates_missing_parent_directories_and_names_a_bad_file(tmp_path):
    from rspo.judges.cache import CachedJudge, JudgementCache

    c = JudgementCache(tmp_path / "a" / "b" / "c.sqlite")
    assert c.path.is_file() and len(c) == 0
    assert repr(c) == f"JudgementCache({str(tmp_path / 'a' / 'b' / 'c.sqlite')!r})"
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError) as e:
        JudgementCache(bad)
    assert str(e.value).startswith(f"{bad}: not a readable judge cache (")
    assert str(e.value).endswith(
        "it only caches judge calls, so delete it and run again (the judge is asked again)"
    )
    inner = PythonJudge(_fn)
    cj = CachedJudge(inner, c)
    assert repr(cj) == f"CachedJudge({inner!r}, {str(c.path)!r})"
    assert cj.judge_id == inner.judge_id and cj.order_sensitive is False


def test_cache_keeps_one_connection_per_process_and_reopens_after_a_fork(tmp_path, monkeypatch):
    """Every use in the process that opened the connection reuses it; a process with another
    pid (a forked child inheriting the object) opens its own."""
    import sqlite3

    from rspo.judges import cache as cache_mod
    from rspo.judges.cache import JudgementCache

    opened = []
    real = sqlite3.connect

    def connect(*a, **k):
        conn = real(*a, **k)
        opened.append(conn)
        return conn

    monkeypatch.setattr(cache_mod.sqlite3, "connect", connect)
    c = JudgementCache(tmp_path / "c.sqlite")
    c.put_many("j", {"k1": 0.25})
    assert c.get_many(["k1"]) == {"k1": 0.25} and len(c) == 1 and c.count("j") == 1
    assert len(opened) == 1
    pid = cache_mod.os.getpid()
    monkeypatch.setattr(cache_mod.os, "getpid", lambda: pid + 1)  # as in a forked child
    assert c.get_many(["k1"]) == {"k1": 0.25} and len(c) == 1
    assert len(opened) == 2
    c.close()
    opened[0].close()
