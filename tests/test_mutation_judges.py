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


# ----------------------------------------------------------------- base: messages and factories
def test_a_credential_setting_is_refused_with_the_whole_advice():
    """The refusal names the judge and the setting, and says what to do instead: every word
    of the advice (which setting names the variable, for which header) is the user's fix."""
    from rspo.judges.base import build_judge

    with pytest.raises(ValueError) as e:
        build_judge("python", fn="x:y", api_key="sk")
    assert str(e.value) == (
        "judge 'python': setting 'api_key' looks like a credential; settings are saved with "
        "the run's config, so secrets do not belong there. Export the key in an environment "
        "variable and name it instead (openai: api_key_env: VAR for the bearer token, "
        "header_env: {HEADER: VAR} for other headers)"
    )


def test_available_judges_imports_the_modules_declared_in_the_plugin_group(tmp_path, monkeypatch):
    """A judge module declared in the ``rspo.judges`` group (not imported by anyone) is
    imported by the first lookup, so its judge is listed."""
    import sys

    from rspo.judges import base
    from rspo.utils import plugins

    _ns_judge(
        "mut_plugin_judges", tmp_path, monkeypatch,
        "from rspo.judges.base import Judge, register_judge\n"
        "@register_judge('mut-plugin-judge')\n"
        "class Plugged(Judge):\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [0.5] * len(p)\n",
    )  # fmt: skip
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(plugins, "_LOADED", set(plugins._LOADED))
    declared = plugins._GROUPS.get(base.PLUGIN_GROUP, [])
    monkeypatch.setitem(plugins._GROUPS, base.PLUGIN_GROUP, [*declared, "mut_plugin_judges"])
    try:
        assert "mut-plugin-judge" not in base._REGISTRY  # declared, not imported yet
        assert "mut-plugin-judge" in base.available_judges()
    finally:
        sys.modules.pop("mut_plugin_judges", None)


def test_build_judge_checks_the_judge_id_of_a_module_class(tmp_path, monkeypatch):
    """A ``module:Class`` judge taking settings without a judge_id is refused by build_judge
    too (its cache key would not tell two settings apart)."""
    from rspo.judges.base import build_judge

    _ns_judge(
        "mut_sized_judges", tmp_path, monkeypatch,
        "from rspo.judges.base import Judge\n"
        "class Sized(Judge):\n"
        "    def __init__(self, size=1):\n"
        "        self.size = size\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [0.5] * len(p)\n",
    )  # fmt: skip
    with pytest.raises(ValueError) as e:
        build_judge("mut_sized_judges:Sized", size=2)
    assert "mut_sized_judges.Sized takes settings (size) but does not define judge_id" in str(
        e.value
    )


def test_a_factory_without_a_signature_is_called_and_reports_its_own_errors():
    """A C callable has no inspectable signature: build_judge calls it as is, so it builds
    the judge, and a setting it does not take is reported by the call itself."""
    import functools
    import itertools

    from rspo.judges.base import _REGISTRY, build_judge

    half = Fixed([0.5])
    _REGISTRY["mut-c-factory"] = functools.partial(next, itertools.repeat(half))
    try:
        assert build_judge("mut-c-factory") is half
        with pytest.raises(TypeError, match="takes no keyword arguments"):
            build_judge("mut-c-factory", size=1)
    finally:
        _REGISTRY.pop("mut-c-factory", None)


def test_valid_settings_list_only_what_a_user_can_set(tmp_path, monkeypatch):
    """A missing setting names the settings to give: not ``*args``/``**kwargs`` of a class
    that passes extras on, nor the ``self`` of a method used as a factory."""
    from rspo.judges.base import _REGISTRY, build_judge

    _ns_judge(
        "mut_extras_judges", tmp_path, monkeypatch,
        "from rspo.judges.base import Judge\n"
        "class Extras(Judge):\n"
        "    def __init__(self, size, *args, **kwargs):\n"
        "        self.size = size\n"
        "    @property\n"
        "    def judge_id(self):\n"
        "        return f'extras[{self.size}]'\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [0.5] * len(p)\n",
    )  # fmt: skip
    with pytest.raises(ValueError) as e:
        build_judge("mut_extras_judges:Extras")
    assert str(e.value) == (
        "judge 'mut_extras_judges:Extras': missing a required argument: 'size'; "
        "valid settings: size"
    )
    assert build_judge("mut_extras_judges:Extras", size=3).judge_id == "extras[3]"

    def make(self=None, *, size):  # a method's function registered as the factory
        return Fixed([size])

    _REGISTRY["mut-method-factory"] = make
    try:
        with pytest.raises(ValueError) as e:
            build_judge("mut-method-factory")
        assert str(e.value) == (
            "judge 'mut-method-factory': missing a required argument: 'size'; valid settings: size"
        )
    finally:
        _REGISTRY.pop("mut-method-factory", None)


def test_build_judge_names_a_default_named_judge_after_what_built_it(tmp_path, monkeypatch):
    """A judge whose class has no name of its own is named after the ``module:Class`` or the
    registered name that built it, so two such judges do not share a judge_id (and cached
    verdicts); a class naming itself keeps its name."""
    from rspo.judges.base import _REGISTRY, Judge, build_judge

    _ns_judge(
        "mut_named_judges", tmp_path, monkeypatch,
        "from rspo.judges.base import Judge\n"
        "class Mine(Judge):\n"
        "    name = 'mine'\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [0.5] * len(p)\n"
        "class Anonymous(Judge):\n"
        "    def _prefer(self, p, a, b):\n"
        "        return [0.5] * len(p)\n",
    )  # fmt: skip
    assert build_judge("mut_named_judges:Mine").name == "mine"
    assert build_judge("mut_named_judges:Anonymous").name == "mut_named_judges:Anonymous"
    from mut_named_judges import Anonymous

    _REGISTRY["mut-fn-factory"] = lambda: Anonymous()  # factory functions, not the class
    _REGISTRY["mut-fn-factory2"] = lambda: Anonymous()
    try:
        j, k = build_judge("mut-fn-factory"), build_judge("mut-fn-factory2")
        assert isinstance(j, Anonymous) and Anonymous().name == Judge.name == "judge"
        assert (j.name, j.judge_id, k.judge_id) == (
            "mut-fn-factory",
            "mut-fn-factory",
            "mut-fn-factory2",
        )
        assert build_judge("mut_named_judges:Mine").judge_id == "mine"
    finally:
        _REGISTRY.pop("mut-fn-factory", None)
        _REGISTRY.pop("mut-fn-factory2", None)


def test_a_judge_whose_id_is_its_name_is_named_once_in_errors():
    """An error names the judge; the id is added only when it says more than the name."""
    from rspo.judges.base import JudgeError

    class Wild(Judge):
        name = "wild"

        def _prefer(self, p, a, b):
            return [1.5] * len(p)

    with pytest.raises(JudgeError) as e:
        Wild().prefer(["p"], ["a"], ["b"])
    assert str(e.value) == (
        "judge 'wild' returned 1.5 for pair 0 (prompt 'p'); "
        "a preference probability must lie in [0, 1]"
    )


# ----------------------------------------------------------------- symmetric
class FirstShown(Judge):
    """Prefers whichever response is shown first, P = 0.75; ``order_sensitive`` as told."""

    name = "first"

    def __init__(self, order_sensitive):
        self.order_sensitive = order_sensitive
        self.calls = []

    @property
    def judge_id(self):
        return f"first[{self.order_sensitive}]"

    def _prefer(self, p, a, b):
        self.calls.append(len(p))
        return [0.75] * len(p)


def test_symmetric_prefer_refuses_one_mismatched_length_before_asking_the_judge():
    """One list of the wrong length is refused with the three lengths, and the judge is not
    asked (the doubled lists could otherwise line up by accident)."""
    from rspo.judges.symmetric import symmetric_prefer

    j = FirstShown(order_sensitive=True)
    for a, b, got in ((["a", "b", "c"], ["d", "e"], "2, 3, 2"), (["a", "b"], ["d"], "2, 2, 1")):
        with pytest.raises(ValueError) as e:
            symmetric_prefer(j, ["p", "q"], a, b, both_orders=True)
        assert str(e.value) == (
            f"prompts, responses_a, responses_b must have equal lengths, got {got}"
        )
    assert j.calls == []


def test_symmetric_judge_obeys_a_forced_both_orders():
    """both_orders=False passes an order-sensitive judge's verdicts through (one order);
    both_orders=True averages even a judge that claims to be symmetric:
    ½·(0.75 + 1 − 0.75) = 0.5, both orders in one call of 2 pairs."""
    from rspo.judges.symmetric import SymmetricJudge

    sens = FirstShown(order_sensitive=True)
    assert SymmetricJudge(sens, both_orders=False).prefer(["p"], ["a"], ["b"]) == [0.75]
    assert sens.calls == [1]
    insens = FirstShown(order_sensitive=False)
    assert SymmetricJudge(insens, both_orders=True).prefer(["p"], ["a"], ["b"]) == [0.5]
    assert insens.calls == [2]


# ----------------------------------------------------------------- cache: judge and store
def test_cached_judge_keeps_the_inner_judges_name_in_its_messages(tmp_path):
    from rspo.judges.cache import CachedJudge

    cj = CachedJudge(Fixed([0.5]), tmp_path / "c.sqlite")
    assert cj.name == "fixed"
    with pytest.raises(ValueError) as e:
        cj.prefer(["p"], ["a", "b"], ["c"])
    assert str(e.value) == (
        "judge 'fixed': prompts, responses_a, responses_b must have equal lengths, got 1, 2, 1"
    )


def test_cached_judge_stats_add_up_over_calls(tmp_path):
    """Call 1: pairs x, x, y: 3 misses, 2 unique pairs in 1 inner call. Call 2: x, z: 1 hit,
    1 miss, 1 pair in 1 call. Call 3: x, y: 2 hits. Totals: 3 hits, 4 misses, 3 inner pairs,
    2 inner calls."""
    from rspo.judges.cache import CachedJudge

    inner = FirstShown(order_sensitive=False)
    cj = CachedJudge(inner, tmp_path / "c.sqlite")
    x, y, z = ("p", "a", "b"), ("q", "c", "d"), ("r", "e", "f")
    for pairs in ([x, x, y], [x, z], [x, y]):
        assert cj.prefer(*map(list, zip(*pairs))) == [0.75] * len(pairs)
    assert cj.stats == {"hits": 3, "misses": 4, "inner_pairs": 3, "inner_calls": 2}
    assert inner.calls == [2, 1] and len(cj.cache) == 3


def test_cache_default_timeout_wal_mode_and_a_short_timeout_gives_up(tmp_path):
    """The cache waits up to 60 s (default) for another writer; a cache made with
    timeout=0.1 gives up after about 0.1 s (not SQLite's own 5 s). The file is in WAL mode,
    so readers and a writer in other processes do not block each other."""
    import sqlite3
    import time

    from rspo.judges.cache import JudgementCache

    path = tmp_path / "c.sqlite"
    with JudgementCache(path) as default:
        assert default.timeout == 60.0
    probe = sqlite3.connect(path)
    assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    probe.close()
    c = JudgementCache(path, timeout=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        c.put_many("j", {"k": 0.5})
    assert time.monotonic() - t0 < 2.5
    other.execute("ROLLBACK")
    other.close()
    c.put_many("j", {"k": 0.5})
    assert c.count("j") == 1
    c.close()


def test_cache_can_be_used_from_another_thread(tmp_path):
    """Made in one thread, used in another (e.g. a thread pool of judge calls)."""
    from concurrent.futures import ThreadPoolExecutor

    from rspo.judges.cache import JudgementCache

    c = JudgementCache(tmp_path / "c.sqlite")
    with ThreadPoolExecutor(1) as pool:
        pool.submit(c.put_many, "j", {"k": 0.25}).result()
        assert pool.submit(c.get_many, ["k"]).result() == {"k": 0.25}
    assert c.get_many(["k"]) == {"k": 0.25}
    c.close()


def test_cache_closed_twice_and_reopened_on_next_use(tmp_path):
    """close() twice (explicitly, then leaving the with block) is fine, and the cache is
    reopened on its next use with its rows."""
    from rspo.judges.cache import JudgementCache

    with JudgementCache(tmp_path / "c.sqlite") as c:
        c.put_many("j", {"k": 0.5})
        c.close()
    assert c.count("j") == 1 and c.get_many(["k"]) == {"k": 0.5} and len(c) == 1
    c.close()


def test_cache_lookups_stay_under_sqlites_variable_limit(tmp_path, monkeypatch):
    """1200 pairs at once on a SQLite built with the historical 999 bound-variable limit:
    looked up in chunks, so the batch is judged and then served from the cache."""
    import sqlite3

    from rspo.judges import cache as cache_mod
    from rspo.judges.cache import CachedJudge

    real = sqlite3.connect

    def connect(*a, **k):
        conn = real(*a, **k)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn

    monkeypatch.setattr(cache_mod.sqlite3, "connect", connect)
    cj = CachedJudge(FirstShown(order_sensitive=False), tmp_path / "c.sqlite")
    prompts = [f"p{i}" for i in range(1200)]
    for _ in range(2):
        assert cj.prefer(prompts, ["a"] * 1200, ["b"] * 1200) == [0.75] * 1200
    assert cj.stats == {"hits": 1200, "misses": 1200, "inner_pairs": 1200, "inner_calls": 1}
    cj.cache.close()
