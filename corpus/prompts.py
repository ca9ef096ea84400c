"""Instruction texts of the prompts, one source for the corpus, training (VLPO) and evaluation, so that the prompts
a model is trained on and evaluated with cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
YESNO_INSTRUCTION = "Answer the question with yes or no."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."


def option_lines(options: Sequence[tuple[str, str]]) -> str:
    """`(("A", "liver"), ("B", "kidney"))` -> "A. liver\\nB. kidney"."""
    return "\n".join(f"{letter}. {text}" for letter, text in options)


def mc_prompt_text(question: str, options: Sequence[tuple[str, str]], instruction: str = MC_INSTRUCTION) -> str:
    """Question, one "A. text" line per option, the instruction (the VLPO and synthetic-grounding prompt)."""
    opts = option_lines(options)
    return f"{question}\n{opts}\n{instruction}" if opts else f"{question}\n{instruction}"
