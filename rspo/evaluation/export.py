"""``rspo export``: a model's answers to external benchmarks' questions, in their own formats.

From local question files it writes what each benchmark's judge reads; the judges
themselves (alpaca_eval, Arena-Hard-Auto's ``gen_judgment.py``, FastChat's
``llm_judge``) stay outside rspo.

* AlpacaEval: ``alpaca_eval/model_outputs.json``, a JSON list of ``{instruction, output,
  generator, dataset}`` (:func:`rspo.evaluation.alpaca.write_alpaca_outputs`); questions:
  a JSON list or JSONL of objects with ``instruction`` (and optionally ``dataset``), as in
  AlpacaEval's ``alpaca_eval.json``.
* Arena-Hard-Auto: ``arena_hard/model_answer/<model_id>.jsonl``. Questions of v0.1
  (``{question_id, category, turns: [{content}]}``) give v0.1 rows ``{question_id,
  answer_id, model_id, choices: [{index, turns: [{content, token_len}]}], tstamp,
  conv_metadata: {token_len}}`` (lmarena/arena-hard-auto ``gen_answer.py``); questions of
  v2.0 (``{uid, category, prompt}``) give v2.0 rows ``{uid, ans_id, model, messages:
  [user, {role: assistant, content: {answer}}], tstamp, metadata: {token_len}}``
  (``src/arenahard/gen_answer.py``). ``token_len`` counts the model's own tokens.
* MT-Bench: ``mt_bench/model_answer/<model_id>.jsonl``, FastChat's ``gen_model_answer.py``
  rows ``{question_id, answer_id, model_id, choices: [{index: 0, turns: [str, ...]}],
  tstamp, generate_params}``; questions ``{question_id, category, turns: [str, ...]}``.
  Turn k is generated after the conversation so far, the model's own earlier answers
  included, formatted with the model's chat template (``data.chat_template``).

Decoding is greedy by default (``temperature`` 0: reproducible, one answer per question;
FastChat's per-category temperatures are not applied). Rows are appended per batch of
questions, so an interrupted export resumes where it stopped; ``export.json`` records the
model and settings, and a later export with others into the same directory is refused
unless ``overwrite``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rspo.utils.io import append_jsonl, atomic_write_json, read_jsonl

BENCHMARKS = ("alpaca_eval", "arena_hard", "mt_bench")


@dataclass
class Question:
    """One benchmark question: its id, its user turns and the fields its format carries."""

    qid: Any
    turns: list[str]
    fields: dict[str, Any] = field(default_factory=dict)


def _rows(path: Path) -> list[tuple[str, Any]]:
    """(``file:line`` or ``file[i]``, object) of a JSONL file, or of a ``.json`` list."""
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON ({e})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of questions")
        return [(f"{path}[{i}]", r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON line ({e.msg})") from None
    return out


def _text(where: str, name: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{where}: field {name!r} must be a non-empty string, got {v!r:.80}")
    return v


def _field(where: str, rec: Any, name: str) -> Any:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if name not in rec:
        raise ValueError(f"{where}: no {name!r} field (keys: {', '.join(rec) or 'none'})")
    return rec[name]


def read_questions(path: str | Path, benchmark: str) -> list[Question]:
    """The questions of a local ``benchmark`` question file; errors name file, line, field."""
    path, out = Path(path), []
    for where, rec in _rows(path):
        if benchmark == "alpaca_eval":
            q = Question(len(out), [_text(where, "instruction", _field(where, rec, "instruction"))])
            q.fields["dataset"] = str(rec.get("dataset", "rspo"))
        elif benchmark == "arena_hard" and isinstance(rec, dict) and "uid" in rec:  # v2.0
            q = Question(rec["uid"], [_text(where, "prompt", _field(where, rec, "prompt"))])
            q.fields["version"] = 2
        elif benchmark in ("arena_hard", "mt_bench"):
            turns = _field(where, rec, "turns")
            qid = _field(where, rec, "question_id")
            if not isinstance(turns, list) or not turns:
                raise ValueError(f"{where}: field 'turns' must be a non-empty list")
            if benchmark == "arena_hard":  # v0.1: [{"content": ...}]
                turns = [
                    _text(where, "turns[].content", _field(where, t, "content")) for t in turns
                ]
            else:
                turns = [_text(where, f"turns[{j}]", t) for j, t in enumerate(turns)]
            q = Question(qid, turns, {"version": 1})
        else:
            raise ValueError(f"unknown benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")
        out.append(q)
    if not out:
        raise ValueError(f"question file {path} holds no questions")
    ids = [q.qid for q in out]
    if len(set(map(str, ids))) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: question id {dup!r} appears more than once")
    return out


#: ``generate(conversations) -> (answers, prompt texts)``; a conversation ends with a user turn
Generate = Callable[[list[list[dict[str, str]]]], tuple[list[str], list[str]]]


def answer_questions(questions: Sequence[Question], generate: Generate) -> list[dict[str, Any]]:
    """Every turn of every question answered in order: turn k's conversation holds the user
    turns before it and the model's own answers to them. ``{"turns", "prompt"}`` per
    question (``prompt``: the formatted prompt of its last turn)."""
    answers: list[list[str]] = [[] for _ in questions]
    prompts = [""] * len(questions)
    for k in range(max(len(q.turns) for q in questions)):
        todo = [i for i, q in enumerate(questions) if len(q.turns) > k]
        convs = []
        for i in todo:
            msgs: list[dict[str, str]] = []
            for j in range(k + 1):
                msgs.append({"role": "user", "content": questions[i].turns[j]})
                if j < k:
                    msgs.append({"role": "assistant", "content": answers[i][j]})
            convs.append(msgs)
        texts, shown = generate(convs)
        for i, t, p in zip(todo, texts, shown):
            answers[i].append(t)
            prompts[i] = p
    return [{"turns": a, "prompt": p} for a, p in zip(answers, prompts)]


def _row(bench: str, q: Question, ans: dict, model_id: str, ntok: Callable, params: dict) -> dict:
    """One answer row in ``bench``'s own format."""
    now, aid = time.time(), uuid.uuid4().hex[:22]
    if bench == "mt_bench":
        return {
            "question_id": q.qid,
            "answer_id": aid,
            "model_id": model_id,
            "choices": [{"index": 0, "turns": ans["turns"]}],
            "tstamp": now,
            "generate_params": {"prompt": ans["prompt"], **params},
        }
    text = ans["turns"][0]
    if q.fields["version"] == 2:
        return {
            "uid": q.qid,
            "ans_id": aid,
            "model": model_id,
            "messages": [
                {"role": "user", "content": q.turns[0]},
                {"role": "assistant", "content": {"answer": text}},
            ],
            "tstamp": now,
            "metadata": {"token_len": ntok(text)},
        }
    turns = [{"content": t, "token_len": ntok(t)} for t in ans["turns"]]
    return {
        "question_id": q.qid,
        "answer_id": aid,
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": now,
        "conv_metadata": {"token_len": turns[-1]["token_len"]},
    }


def _key(row: dict) -> str:
    """The question id an answer row (or an AlpacaEval progress row) answers."""
    for name in ("qid", "uid", "question_id"):
        if name in row:
            return str(row[name])
    return ""


def export_answers(
    out: str | Path,
    questions: dict[str, str | Path],
    generate: Generate,
    model_id: str,
    settings: dict[str, Any],
    count_tokens: Callable[[str], int] = len,
    batch_size: int = 16,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Answer each benchmark's question file (``{benchmark: path}``) and write its answers
    under ``out`` in its own format; returns ``{benchmark: file written}``. ``settings``
    (model, decoding) go to ``out/export.json``: a resumed export must match them."""
    if not questions:
        raise ValueError(
            "rspo export: no question file given (--alpaca-eval, --arena-hard, --mt-bench)"
        )
    loaded = {b: read_questions(p, b) for b, p in questions.items()}  # all checked up front
    if "/" in model_id or not model_id.strip():
        raise ValueError(f"--model-id {model_id!r}: must be a non-empty name without '/'")
    out = Path(out)
    claim_file, claim = out / "export.json", {"model_id": model_id, **settings}
    claim = json.loads(json.dumps(claim, default=str))
    targets = {
        "alpaca_eval": out / "alpaca_eval" / "model_outputs.partial.jsonl",
        "arena_hard": out / "arena_hard" / "model_answer" / f"{model_id}.jsonl",
        "mt_bench": out / "mt_bench" / "model_answer" / f"{model_id}.jsonl",
    }
    if claim_file.exists():
        try:
            have = json.loads(claim_file.read_text(encoding="utf-8"))
        except ValueError:
            have = None
        if have != claim:
            if not overwrite:
                diff = sorted(
                    k for k in set(claim) | set(have or {}) if (have or {}).get(k) != claim.get(k)
                )
                raise ValueError(
                    f"{out} holds an export of other settings (differing: {', '.join(diff)}, "
                    f"see {claim_file}); use another --out, or --overwrite to replace it"
                )
    if overwrite:
        for b in BENCHMARKS:
            targets[b].unlink(missing_ok=True)
        (out / "alpaca_eval" / "model_outputs.json").unlink(missing_ok=True)
    atomic_write_json(claim_file, claim)
    params = {
        "do_sample": settings.get("temperature", 0) > 0,
        "temperature": settings.get("temperature", 0),
        "max_new_token": settings.get("max_new_tokens"),
    }
    written: dict[str, Path] = {}
    for bench, qs in loaded.items():
        file = targets[bench]
        done = {_key(r) for r in read_jsonl(file, tolerate_torn_tail=True)}
        todo = [q for q in qs if str(q.qid) not in done]
        if done:
            log(f"rspo export: {bench}: {len(qs) - len(todo)} answers already in {file}")
        for s in range(0, len(todo), batch_size):
            part = todo[s : s + batch_size]
            answers = answer_questions(part, generate)
            if bench == "alpaca_eval":
                rows = [{"qid": q.qid, "output": a["turns"][0]} for q, a in zip(part, answers)]
            else:
                rows = [
                    _row(bench, q, a, model_id, count_tokens, params) for q, a in zip(part, answers)
                ]
            append_jsonl(file, rows)  # a finished batch survives an interruption
            log(f"rspo export: {bench}: {len(done) + s + len(part)}/{len(qs)} answered")
        if bench == "alpaca_eval":
            from rspo.evaluation.alpaca import write_alpaca_outputs

            got = {r["qid"]: r["output"] for r in read_jsonl(file)}
            file = write_alpaca_outputs(
                out / "alpaca_eval" / "model_outputs.json",
                [q.turns[0] for q in qs],
                [got[q.qid] for q in qs],
                model_id,
                [q.fields["dataset"] for q in qs],
            )
            targets[bench].unlink()
        written[bench] = file
    return written


def hf_generate(
    model_path: str, cfg: Any, max_new_tokens: int, temperature: float = 0.0, seed: int = 0
) -> tuple[Generate, Callable[[str], int]]:
    """A :data:`Generate` over rspo's generation backend for the model at ``model_path``,
    loaded with ``cfg.model``'s settings at the first call, prompts formatted per
    ``cfg.data.chat_template``; with a token counter of its tokenizer."""
    from rspo.data.prompts import format_prompt
    from rspo.generation import SamplingParams, build_backend
    from rspo.modeling import load_configured, load_tokenizer, resolve_device
    from rspo.utils.seeds import derive_seed

    tok = load_tokenizer(model_path, cfg.model.trust_remote_code)
    params = SamplingParams(max_new_tokens, temperature, 1.0, 0)
    held: list[Any] = []  # the backend, built at the first call (after the inputs are checked)

    def backend() -> Any:
        if not held:
            model = load_configured(model_path, cfg.model, resolve_device(cfg.model.device))
            g = cfg.generation
            held.append(build_backend("hf", model, tok, g.batch_size, decode=g.hf_decode))
        return held[0]

    def generate(convs: list[list[dict[str, str]]]) -> tuple[list[str], list[str]]:
        # a one-turn question is a plain prompt, as rspo formats its own prompts
        ids = [
            format_prompt(tok, c[0]["content"] if len(c) == 1 else c, cfg.data.chat_template)[1]
            for c in convs
        ]
        seeds = [derive_seed(seed, "export", json.dumps(c)) for c in convs]  # per conversation
        comps = backend().generate(ids, seeds, params)
        return [c.text.strip() for c in comps], [tok.decode(i) for i in ids]

    return generate, lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def default_model_id(model_path: str) -> str:
    """A model's name in the answer files: ``<run>-iter_NNN`` for a training run's
    checkpoint (``<run>/iter_NNN/checkpoint``), else the directory's (or ``gym``'s) name."""
    p = Path(model_path).expanduser()
    if not p.exists():
        return model_path.replace("/", "_")
    p = p.resolve()
    if p.name == "checkpoint" and p.parent.name.startswith("iter_"):
        return f"{p.parent.parent.name}-{p.parent.name}"
    return p.name
