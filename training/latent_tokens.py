"""The three MedLVR control tokens and the stop ids: what the latent loop needs to know about the tokenizer.

Import-free of `medlvr` (torch only, not even that): this module is one of the sources that
`medlvr.training.portable_generate` bundles into every checkpoint's `custom_generate/generate.py`, which must run
where MedLVR is not installed. `medlvr.training.model` re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

START_TOKEN = "<Medlvr_Start>"
LATENT_TOKEN = "<Medlvr_Latent>"
END_TOKEN = "<Medlvr_End>"
LATENT_TOKENS = (START_TOKEN, LATENT_TOKEN, END_TOKEN)


def eos_token_ids(model) -> tuple[int, ...]:
    """The stop ids of `model.generation_config` (an int, a list, or None)."""
    eos = model.generation_config.eos_token_id
    return () if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))


@dataclass(frozen=True)
class LatentTokenIds:
    """Token ids of the control tokens; format checks work on these ids, never on decoded text."""

    start: int
    latent: int
    end: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "LatentTokenIds":
        ids = [tokenizer.convert_tokens_to_ids(t) for t in LATENT_TOKENS]
        # an unknown token maps to unk (or None without unk): both would silently corrupt decoding
        if any(i is None or i == tokenizer.unk_token_id for i in ids) or len(set(ids)) != 3:
            raise ValueError(f"tokenizer lacks the MedLVR tokens {LATENT_TOKENS}: got ids {ids}")
        return cls(*ids)
