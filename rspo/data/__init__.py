"""Prompt sets: loading, chat-template formatting and tokenization."""

from rspo.data.prompts import PromptSet, load_prompts

__all__ = ["PromptSet", "load_prompts"]
