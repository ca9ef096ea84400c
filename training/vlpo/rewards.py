"""Rewards for VLPO (docs/method.md §4.2): `r = r_acc + r_fmt`, pure functions in a registry.

Each reward is registered (`@register_reward("name")`) as `fn(inputs: RewardInputs) -> (N,) float32`;
`compute_rewards` sums `weight * reward` over its `weights` ({"accuracy": 1, "format": format_weight} by default),
so a new reward is one registered function plus its weight.

* Format (`format_rewards`): 1 iff BOTH `<Medlvr_Start>` and `<Medlvr_End>` occur among the generated ids,
  checked by token id (decoded text with `skip_special_tokens=True` silently drops them).
* Accuracy (in `compute_rewards`): the answer span is the text after the first `<Medlvr_End>` (by id; the whole
  response when the trajectory has none, e.g. vanilla GRPO), decoded without special tokens; the option letter
  is parsed by the evaluation parser (docs/benchmarks.md §3 rules: letter, leading "B." / "(B)", "answer is B", a
  unique standalone letter, option text); an unparseable answer scores 0. No random or similarity fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from medlvr.corpus.evalsets.answers import parse_mc
from medlvr.training.model import LatentTokenIds
from medlvr.training.vlpo.algos import register_into


def parse_choice(text: str, options: Sequence[tuple[str, str]]) -> str | None:
    """Option letter from the decoded answer text, or None (unparseable): the evaluation parser
    (`medlvr.corpus.evalsets.answers.parse_mc`, docs/benchmarks.md §3), so training rewards and benchmark scoring agree.

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


@dataclass(frozen=True)
class RewardInputs:
    """What a reward sees for N trajectories: sequences / gen_mask (N, T) on CPU, the decoded answer text and
    the parsed option letter (None: unparseable) per trajectory, the options and gold letter per trajectory."""

    sequences: torch.Tensor
    gen_mask: torch.Tensor
    ids: LatentTokenIds
    answers: list[str]
    letters: list[str | None]
    options: Sequence[Sequence[tuple[str, str]]]
    gold: Sequence[str]


Reward = Callable[[RewardInputs], torch.Tensor]
REWARDS: dict[str, Reward] = {}


def register_reward(name: str):
    """Decorator: register `fn(inputs: RewardInputs) -> (N,) float32` as the reward `name`."""
    return register_into(REWARDS, "reward", name)


@register_reward("accuracy")
def accuracy_rewards(x: RewardInputs) -> torch.Tensor:
    """(N,) float32: 1 where the parsed letter is the gold letter (an unparseable answer scores 0)."""
    return torch.tensor([float(letter == g) for letter, g in zip(x.letters, x.gold)])


@register_reward("format")
def format_reward(x: RewardInputs) -> torch.Tensor:
    """(N,) float32: 1 iff both latent control tokens were generated (`format_rewards`)."""
    return format_rewards(x.sequences, x.gen_mask, x.ids)


def compute_rewards(
    sequences: torch.Tensor,
    gen_mask: torch.Tensor,
    ids: LatentTokenIds,
    tokenizer,
    options: Sequence[Sequence[tuple[str, str]]],
    gold: Sequence[str],
    eos_ids: Sequence[int] = (),
    format_weight: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Rewards for N trajectories; options / gold are per trajectory (repeat per prompt G times).

    `weights`: {registered reward: weight}, default {"accuracy": 1.0, "format": format_weight}.
    Returns {"reward": the weighted sum, one entry per weighted reward, "parsed"} each (N,) float32 on CPU,
    plus "answers" (list of str).
    """
    weights = {"accuracy": 1.0, "format": format_weight} if weights is None else dict(weights)
    unknown = sorted(set(weights) - set(REWARDS))
    if not weights or unknown:
        raise ValueError(f"rewards must name registered rewards, got {unknown or 'none'}; registered: "
                         f"{sorted(REWARDS)}")
    seqs = sequences.masked_fill(~gen_mask.bool(), -1).tolist()
    letters, answers = [], []
    for row, opts in zip(seqs, options):
        row = [t for t in row if t >= 0]
        text = tokenizer.decode(answer_token_ids(row, ids, eos_ids), skip_special_tokens=True)
        answers.append(text)
        letters.append(parse_choice(text, opts))
    x = RewardInputs(sequences.cpu(), gen_mask.cpu(), ids, answers, letters, options, gold)
    out: dict = {name: REWARDS[name](x) for name in weights}
    total = None
    for name, w in weights.items():
        term = out[name] if w == 1.0 else w * out[name]
        total = term if total is None else total + term
    out.update(reward=total, parsed=torch.tensor([float(letter is not None) for letter in letters]), answers=answers)
    return out
