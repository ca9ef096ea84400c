"""Shapes and tokenizer as published (issue 18 §1): the shape factory against Qwen2.5-VL-3B/7B-Instruct's config.json,
and the real Qwen2.5 tokenizer (tests/qwen_real.py): control-token ids, chat template, vision placeholders, save/load.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import Qwen2_5_VLConfig  # noqa: E402

from medlvr.corpus.qwen.processor import CHAT_TEMPLATE  # noqa: E402
from medlvr.training.model import LatentTokenIds, load_checkpoint, save_checkpoint  # noqa: E402
from medlvr.training.tiny import SHAPES, model_config  # noqa: E402
from tests.qwen_real import N_RANKS, published_chat_template, published_config, real_qwen_tokenizer  # noqa: E402
from tests.training.conftest import random_image  # noqa: E402

TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "rms_norm_eps", "max_position_embeddings", "use_sliding_window",
               "bos_token_id", "eos_token_id")
VISION_FIELDS = ("depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels", "out_hidden_size",
                 "patch_size", "spatial_merge_size", "temporal_patch_size", "tokens_per_second", "window_size",
                 "fullatt_block_indexes")
TOP_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
              "tie_word_embeddings")


@pytest.mark.parametrize("size", ["3B", "7B"])
def test_shape_factory_matches_published_config(size):
    raw = published_config(size)
    published = Qwen2_5_VLConfig(**raw)  # as transformers reads the published file
    ours = model_config(real_qwen_tokenizer(), SHAPES[size.lower()])
    for f in TEXT_FIELDS:
        assert getattr(ours.text_config, f) == getattr(published.text_config, f), f
    for key in ("rope_theta", "mrope_section"):
        assert ours.text_config.rope_parameters[key] == published.text_config.rope_parameters[key], key
    for f in VISION_FIELDS:
        assert getattr(ours.vision_config, f) == getattr(published.vision_config, f), f
    for f in TOP_FIELDS:
        assert getattr(ours, f) == getattr(published, f), f
    # the three values the old factory got wrong, against the raw file
    assert ours.text_config.vocab_size == raw["vocab_size"] == {"3B": 151936, "7B": 152064}[size]
    assert ours.text_config.rms_norm_eps == raw["rms_norm_eps"] == 1e-6
    assert ours.vision_config.tokens_per_second == raw["vision_config"]["tokens_per_second"] == 2
    head_dim = raw["hidden_size"] // raw["num_attention_heads"]
    assert 2 * sum(raw["rope_scaling"]["mrope_section"]) == head_dim


def test_real_tokenizer_layout_and_control_token_ids(real_qwen):
    tok = real_qwen.processor.tokenizer
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]) == [
        151652, 151653, 151655, 151656]
    assert tok.convert_tokens_to_ids("<|file_sep|>") == 151664 and N_RANKS == 151643
    assert tok("Hello world")["input_ids"] == [9707, 1879]  # Qwen2.5's ids for these words
    assert (real_qwen.ids.start, real_qwen.ids.latent, real_qwen.ids.end) == (151665, 151666, 151667)
    # inside the padded 7B vocabulary: no resize, and the rows exist in both matrices
    assert real_qwen.model.get_input_embeddings().weight.shape[0] == 152064
    assert real_qwen.model.get_output_embeddings().weight.shape[0] == 152064
    text = "<Medlvr_Start><Medlvr_Latent><Medlvr_Latent><Medlvr_End>yes<|im_end|>"
    assert tok(text, add_special_tokens=False)["input_ids"] == [151665, 151666, 151666, 151667, 9693, 151645]


MESSAGES = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the scan."}]}],
    [{"role": "user", "content": [{"type": "text", "text": "Which organ?\nA. liver"}, {"type": "image"}]}],
    [{"role": "system", "content": "You are a radiologist."},
     {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]},
     {"role": "assistant", "content": "The left one."},
     {"role": "user", "content": [{"type": "text", "text": "Why?"}]}],
]


@pytest.mark.parametrize("messages", MESSAGES)
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_renders_byte_identical_to_qwen25_vl(real_qwen, messages, generation_prompt):
    tok = real_qwen.processor.tokenizer
    ours = tok.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=False,
                                   add_generation_prompt=generation_prompt)
    theirs = tok.apply_chat_template(messages, chat_template=published_chat_template(), tokenize=False,
                                     add_generation_prompt=generation_prompt)
    assert ours == theirs
    assert real_qwen.processor.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=generation_prompt) == theirs


def test_vision_placeholders_are_start_n_pads_end(real_qwen):
    proc = real_qwen.processor
    text = proc.apply_chat_template(MESSAGES[0], tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text], images=[random_image(100, 150, seed=0)], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    t, h, w = enc["image_grid_thw"][0].tolist()
    n = t * h * w // 4  # 2x2 spatial merge
    s = ids.index(151652)
    assert ids[s:s + n + 2] == [151652] + [151655] * n + [151653]
    assert ids.count(151655) == n and ids[:3] == [151644, 8948, 198]  # "<|im_start|>system\n"


def test_save_load_keeps_ids_and_rows(real_qwen, tmp_path):
    m = real_qwen.model
    save_checkpoint(m, real_qwen.processor, tmp_path / "ckpt", k_latent=2)
    model, processor, ids = load_checkpoint(tmp_path / "ckpt")
    assert ids == real_qwen.ids == LatentTokenIds(151665, 151666, 151667)
    assert len(processor.tokenizer) == 151668 and model.get_input_embeddings().weight.shape[0] == 152064
    new = [151665, 151666, 151667]
    assert torch.equal(model.get_input_embeddings().weight[new], m.get_input_embeddings().weight[new])
    assert torch.equal(model.get_output_embeddings().weight[new], m.get_output_embeddings().weight[new])
    enc = processor.tokenizer("<Medlvr_Start> yes", add_special_tokens=False)["input_ids"]
    assert enc == real_qwen.processor.tokenizer("<Medlvr_Start> yes", add_special_tokens=False)["input_ids"]
