"""The text put to the model for each kind of question. The system prompt (rollout's default)
already asks for the final answer inside <answer></answer>."""
from __future__ import annotations

from typing import Sequence

CHOICE_INSTRUCTION = "Answer with the option's letter."
NUMBER_INSTRUCTION = "Answer with a number."
SHORT_INSTRUCTION = "Answer with a single word or phrase."


def letter(index: int) -> str:
    return chr(ord("A") + index)


def multiple_choice(question: str, options: Sequence[str], instruction: str = CHOICE_INSTRUCTION) -> str:
    lines = [question.strip(), "Options:"] + [f"({letter(k)}) {text}" for k, text in enumerate(options)]
    return "\n".join(lines + [instruction])


def free_form(question: str, instruction: str = SHORT_INSTRUCTION) -> str:
    return f"{question.strip()}\n{instruction}"
