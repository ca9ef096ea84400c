"""Tiny factory determinism, MedLVR token setup, local save/load round trip."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from medlvr.training.model import (
    LATENT_TOKENS,
    LatentTokenIds,
    add_latent_tokens,
    load_checkpoint,
    resolve_attn_implementation,
    save_checkpoint,
)
from medlvr.training.tiny import build_tiny


def test_tiny_is_deterministic_from_seed(tiny):
    again = build_tiny(seed=0)
    other = build_tiny(seed=1)
    sd, sd_again, sd_other = tiny.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(sd[k], sd_again[k]) for k in sd)
    assert not all(torch.equal(sd[k], sd_other[k]) for k in sd)
    assert again.processor.tokenizer.get_vocab() == tiny.processor.tokenizer.get_vocab()


def test_latent_tokens_are_atomic_special_tokens(tiny):
    tok = tiny.processor.tokenizer
    ids = tiny.ids
    assert ids == LatentTokenIds.from_tokenizer(tok)
    text = "a<Medlvr_Start><Medlvr_Latent><Medlvr_End>b"
    enc = tok(text)["input_ids"]
    assert [ids.start, ids.latent, ids.end] == [i for i in enc if i in (ids.start, ids.latent, ids.end)]
    assert all(t in tok.all_special_tokens for t in LATENT_TOKENS)
    # the vision tokens survive adding ours (replace_extra_special_tokens=False)
    assert "<|image_pad|>" in tok.all_special_tokens
    assert max(ids.start, ids.latent, ids.end) < tiny.model.get_input_embeddings().weight.shape[0]


def test_added_rows_are_mean_of_existing_rows_and_adding_is_idempotent(tiny):
    tok = tiny.processor.tokenizer
    n_old = min(tiny.ids.start, tiny.ids.latent, tiny.ids.end)
    emb = tiny.model.get_input_embeddings().weight
    head = tiny.model.get_output_embeddings().weight
    for i in (tiny.ids.start, tiny.ids.latent, tiny.ids.end):
        torch.testing.assert_close(emb[i], emb[:n_old].mean(0))
        torch.testing.assert_close(head[i], head[:n_old].mean(0))
    model = copy.deepcopy(tiny.model)
    tok2 = copy.deepcopy(tok)
    with torch.no_grad():
        model.get_input_embeddings().weight[tiny.ids.start] += 1.0  # as if trained
    assert add_latent_tokens(model, tok2) == tiny.ids
    assert len(tok2) == len(tok)
    torch.testing.assert_close(model.get_input_embeddings().weight[tiny.ids.start], emb[tiny.ids.start] + 1.0)


def test_save_load_round_trip(tiny, tmp_path):
    save_checkpoint(tiny.model, tiny.processor, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model, processor, ids = load_checkpoint(tmp_path)
    assert ids == tiny.ids
    assert model.config._attn_implementation == "sdpa"
    sd, sd2 = tiny.model.state_dict(), model.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    image = Image.fromarray(np.full((84, 112, 3), 90, dtype=np.uint8))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the scan."}]}]
    batches = [p(text=[p.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)], images=[image],
                 return_tensors="pt") for p in (tiny.processor, processor)]
    assert torch.equal(batches[0]["input_ids"], batches[1]["input_ids"])
    torch.testing.assert_close(batches[0]["pixel_values"], batches[1]["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(tiny.model(**batches[0]).logits, model(**batches[1]).logits)
    assert processor.tokenizer.padding_side == "left"
    assert processor.chat_template == tiny.processor.chat_template


def test_load_rejects_non_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "Qwen" / "Qwen2.5-VL-7B-Instruct")


def test_attention_implementation_choice():
    assert resolve_attn_implementation() == "sdpa"
    with pytest.raises(ValueError):
        resolve_attn_implementation("flash")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            resolve_attn_implementation("flash_attention_2")
