"""Pairwise judging prompts shared by the LLM judges (local LM and OpenAI-compatible)."""

from __future__ import annotations

import re

FIELDS = ("prompt", "response_a", "response_b")
_FIELD_RE = re.compile(r"\{(prompt|response_a|response_b)\}")

DEFAULT_PAIR_TEMPLATE = (
    "Compare two responses to the same prompt and decide which one is better overall "
    "(more helpful, correct and clear). Answer with a single letter: A or B.\n\n"
    "[PROMPT]\n{prompt}\n\n"
    "[RESPONSE A]\n{response_a}\n\n"
    "[RESPONSE B]\n{response_b}\n\n"
    "Better response:"
)


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` has each of {prompt}, {response_a}, {response_b}."""
    missing = [f for f in FIELDS if "{" + f + "}" not in template]
    if missing:
        raise ValueError(
            "judge template must contain the placeholders {prompt}, {response_a} and "
            f"{{response_b}}; missing: {', '.join('{' + m + '}' for m in missing)}"
        )


def render_pair(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """Fill the template in one pass: braces in the texts or template are left untouched."""
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return _FIELD_RE.sub(lambda m: values[m.group(1)], template)
