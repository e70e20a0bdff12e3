"""Every constructor setting of every judge is part of its ``judge_id``: a shared cache
keyed by it must never serve a verdict computed under another setting. The judges are
built without loading a model (their attributes set as their constructors set them), and
each id is checked exactly, then for a change under every single setting."""

from __future__ import annotations

import pytest

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
