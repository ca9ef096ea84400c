"""Offline tiny Qwen2.5-VL for tests, the demo and benchmarks (no network, no GPU, deterministic from a seed).

`build_tiny(seed)` returns a `TinyBundle`: a byte-level BPE tokenizer trained in-process with `tokenizers`, the
Qwen2-VL image processor (PIL backend, real resize/patch logic), a Qwen2.5-VL processor with a chat template and
a random `Qwen2_5_VLForConditionalGeneration` (about 0.7 M parameters) that already carries the MedLVR tokens
(added through the same `add_latent_tokens` path a real checkpoint goes through).

Round trip: `medlvr.training.model.save_checkpoint(bundle.model, bundle.processor, d)` then
`medlvr.training.model.load_checkpoint(d)` (local directory, `save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers import Qwen2VLImageProcessorPil

from medlvr.training.model import LatentTokenIds, add_latent_tokens, resolve_attn_implementation
from medlvr.corpus.qwen.processor import build_processor

# A few hundred characters of radiology-flavoured text; the BPE merges only need to be plausible.
_CORPUS = [
    "The chest X-ray shows no acute cardiopulmonary abnormality.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "Axial CT of the abdomen demonstrates a hypodense hepatic lesion.",
    "MRI brain: no evidence of acute infarct, hemorrhage or mass effect.",
    "Describe the scan. What is the most likely diagnosis? Answer briefly.",
    "Which organ is abnormal? A. liver B. kidney C. spleen D. lung. The answer is A.",
    "You are a helpful assistant. system user assistant yes no",
] * 20

BASE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VISION_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny model. head_dim = hidden / heads must equal 2 * sum(mrope_section)."""

    bpe_vocab: int = 600
    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 4
    min_pixels: int = 56 * 56  # Qwen2-VL image processor defaults: the real resize logic is exercised
    max_pixels: int = 28 * 28 * 1280
    # for realistic shapes (benchmarks): 0 / () / False keep the tiny defaults
    vocab_size: int = 0  # 0: tokenizer length + 3, padded to a multiple of 64
    vision_intermediate: int = 0  # 0: 2 * vision_hidden
    vision_fullatt: tuple[int, ...] = ()  # (): the last vision block
    tie_word_embeddings: bool = False  # Qwen2.5-VL-7B: False, 3B: True
    # published Qwen2.5-VL values (both sizes); transformers' class defaults differ (1e-5, 4, 32768)
    rms_norm_eps: float = 1e-6
    tokens_per_second: int = 2
    max_position_embeddings: int = 128000


# The shape factory: Qwen2.5-VL-3B/7B-Instruct as published in their Hugging Face model repos' config.json (copied
# into tests/fixtures/qwen25_vl/, which tests/training/test_shapes.py checks these against). Weights stay random.
_QWEN_VISION = dict(vision_depth=32, vision_hidden=1280, vision_intermediate=3420, vision_heads=16,
                    vision_fullatt=(7, 15, 23, 31))
SHAPES = {
    "tiny": TinyConfig(),
    # 3B ties lm_head to the embedding and has the unpadded-to-7B vocabulary 151,936
    "3b": TinyConfig(hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, mrope_section=(16, 24, 24),
                     vocab_size=151936, tie_word_embeddings=True, **_QWEN_VISION),
    "7b": TinyConfig(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, mrope_section=(16, 24, 24),
                     vocab_size=152064, **_QWEN_VISION),
}


@dataclass
class TinyBundle:
    model: Qwen2_5_VLForConditionalGeneration
    processor: object  # Qwen2_5_VLProcessor (image-only subclass without torchvision)
    ids: LatentTokenIds


def build_tokenizer(cfg: TinyConfig = TinyConfig()) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `_CORPUS` (deterministic), Qwen base + vision special tokens, left padding."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.bpe_vocab,
        special_tokens=BASE_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, model_max_length=8192
    )
    hf_tok.padding_side = "left"
    hf_tok.add_special_tokens({"extra_special_tokens": VISION_SPECIAL}, replace_extra_special_tokens=False)
    return hf_tok


def model_config(tokenizer, cfg: TinyConfig, n_extra: int = 3) -> Qwen2_5_VLConfig:
    """The Qwen2_5_VLConfig of shape `cfg` with the special-token ids of `tokenizer` (n_extra: tokens to be added)."""
    tid = tokenizer.convert_tokens_to_ids
    vocab = cfg.vocab_size or ((len(tokenizer) + n_extra + 63) // 64) * 64  # padded: room for added tokens
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=cfg.hidden,
            intermediate_size=cfg.intermediate,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps,
            hidden_act="silu",
            use_sliding_window=False,
            rope_parameters={
                "rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": list(cfg.mrope_section)
            },
            bos_token_id=tid("<|endoftext|>"),
            eos_token_id=tid("<|im_end|>"),
            pad_token_id=tid("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_hidden,
            intermediate_size=cfg.vision_intermediate or 2 * cfg.vision_hidden,
            num_heads=cfg.vision_heads,
            out_hidden_size=cfg.hidden,  # the merger projects into the LM hidden size
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            tokens_per_second=cfg.tokens_per_second,
            hidden_act="silu",
            # the defaults (7, 15, 23, 31) lie outside a shallow tower
            fullatt_block_indexes=list(cfg.vision_fullatt) or [cfg.vision_depth - 1],
        ),
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def build_tiny(
    seed: int = 0,
    cfg: TinyConfig = TinyConfig(),
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> TinyBundle:
    """Tokenizer + processor + random model with MedLVR tokens; same seed (and device) -> identical weights.

    dtype / device let benchmarks build a random model at a real Qwen2.5-VL shape directly on the GPU in bf16.
    tokenizer: a Qwen-layout tokenizer to use instead of the in-process BPE (tests pass the real Qwen2.5 one);
    it gets the MedLVR tokens added in place.
    """
    tokenizer = build_tokenizer(cfg) if tokenizer is None else tokenizer
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels})
    processor = build_processor(tokenizer, image_processor)
    config = model_config(tokenizer, cfg, n_extra=3)
    config._attn_implementation = resolve_attn_implementation(attn_implementation)
    # fork_rng: seeding must not disturb the caller's global RNG stream
    config.dtype = dtype
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)  # parameters are created in `dtype` (no fp32 copy of a 7B model)
        try:
            model = Qwen2_5_VLForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(default_dtype)
    model.eval()
    ids = add_latent_tokens(model, processor.tokenizer)
    # generate() reads pad/eos from the generation config; keep it aligned with the tokenizer
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return TinyBundle(model=model, processor=processor, ids=ids)
