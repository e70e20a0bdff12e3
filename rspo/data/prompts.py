"""Load prompts from JSONL, a local HF dataset or the gym, and format them for a tokenizer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase


@dataclass
class PromptSet:
    """Prompts as the judge sees them (``texts``) and as the policy sees them (``ids``)."""

    texts: list[str]
    ids: list[list[int]]
    source: str


def _read_jsonl_prompts(path: Path) -> list[tuple[str, Any]]:
    """(``file:line``, prompt) for every non-blank line; errors name the file and line."""
    out: list[tuple[str, Any]] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON line ({e.msg})") from e
            out.append((where, _prompt_field(rec, where)))
    return out


#: the roles a chat ``messages`` turn may have (those chat templates know)
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def _prompt_field(rec: Any, where: str) -> Any:
    if not isinstance(rec, dict):
        raise ValueError(
            f"{where}: expected a JSON object with a 'prompt' or 'messages' field, "
            f"got {type(rec).__name__}"
        )
    if "messages" in rec:
        msgs = rec["messages"]
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in msgs
            )
        ):
            raise ValueError(
                f"{where}: field 'messages' must be a non-empty list of {{role: str, content: str}}"
            )
        for j, m in enumerate(msgs):
            if m["role"] not in CHAT_ROLES:  # a typo (`usr`) would reach the template as is
                raise ValueError(
                    f"{where}: messages[{j}] has unknown role {m['role']!r}; "
                    f"use one of {', '.join(CHAT_ROLES)}"
                )
        while msgs and msgs[-1]["role"] == "assistant":  # a dataset's answer (UltraFeedback):
            msgs = msgs[:-1]  # the policy answers the conversation up to its last user turn
        if not msgs:
            raise ValueError(f"{where}: field 'messages' holds only assistant turns")
        return msgs
    if "prompt" in rec:
        p = rec["prompt"]
        if not isinstance(p, str) or not p.strip():
            raise ValueError(
                f"{where}: field 'prompt' must be a non-empty string, got {repr(p)[:80]}"
            )
        return p
    raise ValueError(f"{where}: no 'prompt' or 'messages' field (keys: {', '.join(rec) or 'none'})")


def _read_raw(source: str, split: str, n: int | None, seed: int) -> list[tuple[str, Any]]:
    """(where, prompt) pairs; ``where`` names the file and line (or dataset row)."""
    if source == "gym":
        from rspo.gym.tasks import make_prompts, split_pool

        size = len(split_pool(split))
        if split == "eval" and (n or 128) > size:
            raise ValueError(
                f"data.num_eval_prompts: {n} is more than the gym's {size} distinct eval "
                "prompts; repeats would count as independent prompts and narrow the interval"
            )
        return [
            (f"gym {split} prompt {i}", p.text)
            for i, p in enumerate(make_prompts(split, n or 128, seed=seed))
        ]
    if source == "gym-skills":  # fresh draws from a combinatorial space: never short
        from rspo.gym.skills.tasks import make_prompts as make_skill_prompts

        return [
            (f"gym-skills {split} prompt {i}", p.text)
            for i, p in enumerate(make_skill_prompts(split, n or 128, seed=seed))
        ]
    path, chosen = Path(source), None
    if not path.exists() and ":" in source:  # DIR:SPLIT, a split of a local dataset
        base, _, name = source.rpartition(":")
        if (Path(base) / "dataset_dict.json").is_file():  # saved by DatasetDict.save_to_disk
            path, chosen = Path(base), name
    if not path.exists():
        raise FileNotFoundError(
            f"prompt source {path} does not exist (use a .jsonl file, a dataset dir, 'gym' "
            "or 'gym-skills')"
        )
    if path.is_dir():
        try:
            import datasets
        except ImportError as e:  # an error the CLI reports without a traceback
            raise ValueError(
                f"{path} is a directory: loading a local HF dataset needs the `datasets` "
                "package (pip install datasets), or give a .jsonl file"
            ) from e
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[_dataset_split(path, list(ds), split, chosen)]
        raw = [(f"{path}[{i}]", _prompt_field(dict(r), f"{path}[{i}]")) for i, r in enumerate(ds)]
    else:
        raw = _read_jsonl_prompts(path)
    if not raw:
        raise ValueError(f"prompt file {path} contains no prompts")
    return raw[:n] if n else raw


#: split names tried, in order, when a dataset directory is not given as DIR:SPLIT
SPLIT_NAMES = {"train": ("train",), "eval": ("eval", "test", "validation", "valid")}


def _dataset_split(path: Path, names: list[str], split: str, chosen: str | None) -> str:
    """Which split of a local DatasetDict to read: ``DIR:SPLIT`` if given, else the usual
    name for ``split``, else the only one; never the training split for evaluation."""
    if chosen is not None:
        if chosen not in names:
            raise ValueError(f"{path}: no split {chosen!r} (splits: {', '.join(names)})")
        return chosen
    for name in SPLIT_NAMES.get(split, (split,)):
        if name in names:
            return name
    if len(names) == 1 and split != "eval":
        return names[0]
    raise ValueError(
        f"{path}: which split holds the {split} prompts? (splits: {', '.join(names)}); "
        f"name it as {path}:SPLIT"
    )


def _token_ids(out: Any) -> list[int]:
    """Token ids from ``apply_chat_template(tokenize=True)``: transformers 5 returns a
    ``BatchEncoding`` (a Mapping, not a dict), older versions the list itself."""
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    if not all(isinstance(t, int) for t in ids):
        raise TypeError(f"apply_chat_template returned {type(out).__name__}, not token ids")
    return list(ids)


def format_prompt(tok: PreTrainedTokenizerBase, prompt: Any, mode: str) -> tuple[str, list[int]]:
    """Return (judge-facing text, policy token ids); the chat template is applied per ``mode``
    (auto: when the tokenizer has one; always; never: plain text). A ``messages`` prompt
    without a template is its turns as ``role: content`` lines."""
    has_template = getattr(tok, "chat_template", None) is not None
    if mode == "always" and not has_template:
        raise ValueError("data.chat_template=always but the tokenizer has no chat template")
    use_template = mode == "always" or (mode == "auto" and has_template)
    if isinstance(prompt, list):  # chat messages
        judge_text = judge_view(prompt)
        if not use_template:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
            return judge_text, tok(text, add_special_tokens=True)["input_ids"]
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        return judge_text, _token_ids(ids)
    if use_template:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return prompt, _token_ids(ids)
    return prompt, tok(prompt, add_special_tokens=True)["input_ids"]


def judge_view(messages: list[dict[str, Any]]) -> str:
    """What a judge reads as the prompt of a ``messages`` conversation: a lone user turn as
    it is, anything longer (a system prompt, earlier turns) as ``role: content`` lines, so
    the judge sees the context the policy answered in."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def load_prompts(
    source: str,
    tok: PreTrainedTokenizerBase,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    chat_template: str = "auto",
    max_prompt_length: int = 256,
) -> PromptSet:
    """Load, format and tokenize prompts; too-long prompts are errors naming the prompt."""
    raw = _read_raw(source, split, n, seed)
    texts, ids = [], []
    for i, (where, p) in enumerate(raw):
        try:
            text, pid = format_prompt(tok, p, chat_template)
        except Exception as e:  # e.g. a chat template that rejects a system turn (jinja2)
            raise ValueError(f"{where}: {type(e).__name__}: {e}") from e
        if len(pid) > max_prompt_length:
            raise ValueError(
                f"{where}: prompt {i} has {len(pid)} tokens > data.max_prompt_length="
                f"{max_prompt_length} ({text[:60]!r}...); shorten it, drop it or raise "
                "data.max_prompt_length"
            )
        texts.append(text)
        ids.append(list(pid))
    return PromptSet(texts=texts, ids=ids, source=source)
