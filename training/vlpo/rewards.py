"""Rewards for VLPO (method.md §4.2): `r = r_acc + r_fmt`, pure functions.

* Format (`format_rewards`): 1 iff BOTH `<Medlvr_Start>` and `<Medlvr_End>` occur among the generated ids,
  checked by token id (decoded text with `skip_special_tokens=True` silently drops them).
* Accuracy (in `compute_rewards`): the answer span is the text after the first `<Medlvr_End>` (by id; the whole
  response when the trajectory has none, e.g. vanilla GRPO), decoded without special tokens; the option letter
  is parsed by the evaluation parser (benchmarks.md §3 rules: letter, leading "B." / "(B)", "answer is B", a
  unique standalone letter, option text); an unparseable answer scores 0. No random or similarity fallback.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medlvr.corpus.evalsets.answers import parse_mc
from medlvr.training.model import LatentTokenIds


def parse_choice(text: str, options: Sequence[tuple[str, str]]) -> str | None:
    """Option letter from the decoded answer text, or None (unparseable): the evaluation parser
    (`medlvr.corpus.evalsets.answers.parse_mc`, benchmarks.md §3), so training rewards and benchmark scoring agree.

    >>> opts = (("A", "liver"), ("B", "kidney"))
    >>> [parse_choice(t, opts) for t in ["B", "(A)", "A. liver", "The answer is B", "kidney", "no idea"]]
    ['B', 'A', 'A', 'B', 'B', None]
    """
    return parse_mc(text, options)


def answer_token_ids(sequence: Sequence[int], ids: LatentTokenIds, eos_ids: Sequence[int] = ()) -> list[int]:
    """Generated ids of the answer: after the first `<Medlvr_End>` (by id; everything if absent), up to EOS."""
    seq = list(sequence)
    if ids.end in seq:
        seq = seq[seq.index(ids.end) + 1:]
    for i, t in enumerate(seq):
        if t in eos_ids:
            return seq[:i]
    return seq


def format_rewards(sequences: torch.Tensor, gen_mask: torch.Tensor, ids: LatentTokenIds) -> torch.Tensor:
    """(N, T) ids + mask -> (N,) float32: 1 iff both control tokens are present (by id)."""
    seq = sequences.masked_fill(~gen_mask.bool(), -1)
    return ((seq == ids.start).any(-1) & (seq == ids.end).any(-1)).float()


def compute_rewards(
    sequences: torch.Tensor,
    gen_mask: torch.Tensor,
    ids: LatentTokenIds,
    tokenizer,
    options: Sequence[Sequence[tuple[str, str]]],
    gold: Sequence[str],
    eos_ids: Sequence[int] = (),
    format_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Rewards for N trajectories; options / gold are per trajectory (repeat per prompt G times).

    Returns {"reward", "accuracy", "format", "parsed"} each (N,) float32 on CPU, plus "answers" (list of str).
    """
    seqs = sequences.masked_fill(~gen_mask.bool(), -1).tolist()
    acc, parsed, answers = [], [], []
    for row, opts, g in zip(seqs, options, gold):
        row = [t for t in row if t >= 0]
        text = tokenizer.decode(answer_token_ids(row, ids, eos_ids), skip_special_tokens=True)
        letter = parse_choice(text, opts)
        answers.append(text)
        parsed.append(float(letter is not None))
        acc.append(float(letter == g))
    acc_t = torch.tensor(acc)
    fmt = format_rewards(sequences.cpu(), gen_mask.cpu(), ids)
    return {"reward": acc_t + format_weight * fmt, "accuracy": acc_t, "format": fmt,
            "parsed": torch.tensor(parsed), "answers": answers}
