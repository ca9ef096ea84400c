"""Batched, KV-cached latent decoding for evaluation and RL rollouts (docs/method.md §2).

One function, `latent_generate`. Per prompt batch:

1. Prefill ONCE per prompt: the images are encoded once, the left-padded prompts run through the decoder with
   explicit 3-D M-RoPE positions from `get_rope_index`. For G samples per prompt the KV cache (and the last
   hidden state, mask and rope deltas) is then repeated G times; row `r = b * G + g`.
2. Every later step is ONE incremental decoder forward over all unfinished rows, whatever their mode:
   `x = where(latent_row, z, embed(token))`, with positions `#non-pad before + rope_delta` (never the model's
   stored `rope_deltas`).
3. Per-row state machine: SAMPLE (text) -> `<Medlvr_Start>` (sampled, or forced as the first token) -> K LATENT
   steps -> FORCE_END (`<Medlvr_End>`) -> SAMPLE until EOS or `max_new_tokens`. Only the first
   `<Medlvr_Start>` opens a latent segment. `k_latent == 0` disables the segment: plain decoding.
4. Latent input at position p is `z = mu + noise` with `mu = H[p-1]`, the final-norm last-layer hidden state of
   the previous position (docs/method.md#indexing-rule); noise is none, absolute (`scale * eps`) or relative to the
   hidden norm (`scale * ||mu|| * eps / ||eps||`), and recorded.
5. A row that emits EOS stops being sampled at once and is dropped from the batch and the KV cache
   (`batch_select_indices`) lazily: only when the live rows fall to `compact_ratio` of the rows in the cache.
   Each drop gathers (copies) the whole cache, so dropping at every EOS copied it up to N - 1 times; with the
   default 0.5 it is copied at most log2(N) times, and finished rows still in the cache cost at most as many
   row-forwards as the live ones (decode steps are bound by reading the weights, not by rows). 1.0 drops at
   every EOS (finished rows cost no forward); 0 never copies. Outputs are the same for every value. The last
   token of a row never needs a forward.

6. Forced control tokens cost no forward of their own (`fuse_control`, default on): when every prompt forces
   `<Medlvr_Start>`, it is appended to the prompts and prefilled with them; when every active row feeds its
   last latent in the same step (always the case after a forced Start), `[z_K, <Medlvr_End>]` go in as one
   2-position forward. A K-latent answer then costs K extra decoder forwards over a plain one, not K + 2.

The lm_head runs only on rows that sample a token this step (not on latent or forced rows).

7. `closed=True` (the visual bottleneck, `medlvr.training.bottleneck`): from a row's first `<Medlvr_End>` on, its
   queries attend through a 4-D mask that hides the prompt's visual tokens, so the answer sees the image only
   through the latent slots (and the prompt text). The same rule as `replay(..., closed=...)`.

8. A text-blind model (`medlvr.training.bottleneck.text_blind_of`, recorded in its checkpoint) prefills with a
   4-D mask that bars the prompt positions after the image (except `<Medlvr_Start>`) from the visual keys, in open
   and closed decoding alike; with `closed=True` the answer then reads the image only through Start and the
   latent slots. The same rule as `replay` and `sft_forward`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from medlvr.training.bottleneck import (attn_implementation_of, check_attn_implementation, closed_attention_mask,
                                        text_blind_of, text_blind_queries)
from medlvr.training.latent_tokens import LatentTokenIds, eos_token_ids
from medlvr.training.sampling import sample_tokens, token_logprobs
from medlvr.training.vlm_inputs import embed_with_images, image_embeddings, rope_positions, step_positions

# per-row mode of the NEXT input
SAMPLE, LATENT, FORCE_END, FORCE_START, DONE = 0, 1, 2, 3, 4  # DONE: finished, still in the KV cache
NOISE_KINDS = ("none", "absolute", "relative")


@dataclass(frozen=True)
class DecodeConfig:
    k_latent: int = 8  # fixed latent budget K; 0 = plain decoding (no control tokens)
    max_new_tokens: int = 64  # counts every generated position: text, control tokens and latent slots
    force_start: bool = True  # True: <Medlvr_Start> is the first generated token; False: the model emits it
    temperature: float = 0.0  # 0 = greedy; log-probs are then recorded at T = 1
    top_p: float = 1.0  # truncates sampling only; log-probs stay those of softmax(logits / T)
    num_samples: int = 1  # G rollouts per prompt sharing one prefill
    noise: str = "none"  # latent exploration noise: none | absolute | relative
    noise_scale: float = 0.0  # sigma (absolute) or alpha (relative to ||mu||)
    eos_token_ids: tuple[int, ...] | None = None  # None: from model.generation_config; () never stops early
    time_steps: bool = False  # record per-step wall time (synchronises the device every step)
    banned_ids: tuple[int, ...] = ()  # excluded from sampling besides <Medlvr_Latent> (RL: the vision tokens)
    fuse_control: bool = True  # forced <Medlvr_Start> rides in the prefill, <Medlvr_End> with the last latent
    closed: bool = False  # visual bottleneck: <Medlvr_End> and the answer may not attend to the visual tokens
    compact_ratio: float = 0.5  # drop finished rows from the cache when live rows <= ratio * cache rows (item 5)

    def __post_init__(self):
        if self.k_latent < 0 or self.max_new_tokens < 1 or self.num_samples < 1:
            raise ValueError(f"need k_latent >= 0, max_new_tokens >= 1, num_samples >= 1: {self}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1: {self}")
        if not 0 <= self.compact_ratio <= 1:
            raise ValueError(f"compact_ratio must be in [0, 1]: {self}")
        if self.noise not in NOISE_KINDS or self.noise_scale < 0:
            raise ValueError(f"noise must be one of {NOISE_KINDS} with noise_scale >= 0: {self}")

    @property
    def logprob_temperature(self) -> float:
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class LatentDecodeOutput:
    """N = B * G rows (prompt-major: row b*G + g), T generated positions, K latent slots, D hidden size.

    sequences:    (N, T) long   generated ids; `<Medlvr_Latent>` at latent slots, pad after a row ended
    gen_mask:     (N, T) bool   position exists (the row had not ended)
    logprobs:     (N, T) float  log p(token) under softmax(logits / logprob_temperature); 0 where not sampled
    sampled_mask: (N, T) bool   token was sampled by the policy (forced tokens, latent slots, pads: False)
    latent_mask:  (N, T) bool   latent slot
    z:            (N, K, D)     latent inputs fed at the latent slots (mu + noise); zero rows where unused
    mu:           (N, K, D)     hidden state at the position before each latent slot, H[p-1]
    noise:        (N, K, D)     z - mu
    n_latent:     (N,) long     latent inputs fed per row (K, or fewer if max_new_tokens cut the segment)
    prompt_index: (N,) long     prompt row of each sample
    """

    sequences: torch.Tensor
    gen_mask: torch.Tensor
    logprobs: torch.Tensor
    sampled_mask: torch.Tensor
    latent_mask: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor
    noise: torch.Tensor
    n_latent: torch.Tensor
    prompt_index: torch.Tensor
    logprob_temperature: float
    closed: bool  # decoded under the visual bottleneck (replay must use the same mask)
    n_steps: int  # generated positions T
    n_prefill_forwards: int  # decoder forwards over the prompts (1)
    n_decode_forwards: int  # incremental decoder forwards (T - 1: the last token needs none)
    timings: dict[str, float] = field(default_factory=dict)  # prefill_s, decode_s, total_s
    step_times: list[float] = field(default_factory=list)  # per step (time_steps=True), seconds
    step_rows: list[int] = field(default_factory=list)  # rows in the forward per step (live + finished in cache)
    n_cache_compactions: int = 0  # KV-cache gathers that dropped finished rows
    step_latent_rows: list[int] = field(default_factory=list)  # rows fed a latent input per step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _latent_noise(mu: torch.Tensor, cfg: DecodeConfig,
                  generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """(n, D) noise for latent means mu (n, D); `generator`: one for all rows, or one per row."""
    if cfg.noise == "none" or cfg.noise_scale == 0:
        return torch.zeros_like(mu)
    if isinstance(generator, Sequence):
        eps = torch.cat([torch.randn((1, mu.shape[-1]), generator=g, device=mu.device, dtype=torch.float32)
                         for g in generator])
    else:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=torch.float32)
    if cfg.noise == "absolute":
        return (cfg.noise_scale * eps).to(mu.dtype)
    # relative: ||noise|| = alpha * ||mu|| exactly, direction uniform on the sphere
    scale = cfg.noise_scale * mu.float().norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True)
    return (scale * eps).to(mu.dtype)


class RowGenerators:
    """One `torch.Generator` per trajectory row (row b*G + g), for `latent_generate(generator=...)`: every row's
    token sampling and latent noise come from its own stream, so a row's draws depend on its seed alone, not on
    which other rows share its batch (the VLPO trainer seeds each row by sample id: the same sample gets the same
    draws on any world size). Costs one small draw per row and step instead of one per step."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self._gens = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self._gens)

    def __getitem__(self, row: int) -> torch.Generator:
        return self._gens[row]


def _for_rows(generator, rows: torch.Tensor):
    """What the draws for rows `rows` take: the one generator, or the list of those rows' own (`RowGenerators`)."""
    return [generator[r] for r in rows.tolist()] if isinstance(generator, RowGenerators) else generator


def _eos_ids(model, cfg: DecodeConfig) -> list[int]:
    return list(eos_token_ids(model) if cfg.eos_token_ids is None else cfg.eos_token_ids)


@torch.no_grad()
def latent_generate(
    model,
    prompts: Mapping[str, torch.Tensor],
    ids: LatentTokenIds,
    cfg: DecodeConfig = DecodeConfig(),
    *,
    force_start: torch.Tensor | None = None,
    generator: torch.Generator | RowGenerators | None = None,
    latent_transform: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    kv_transform: Callable[[object, torch.Tensor], None] | None = None,
) -> LatentDecodeOutput:
    """Generate for a left-padded prompt batch (processor output: input_ids (B, L), attention_mask (B, L),
    mm_token_type_ids (B, L), optional pixel_values (P, C*2*14*14) and image_grid_thw (n_images, 3)).

    force_start: optional (B,) bool per prompt, overriding `cfg.force_start` (rows of one batch may differ).
    generator: RNG for sampling and latent noise (None = torch's global RNG), or `RowGenerators` (one per row).
    latent_transform: optional `f(z, rows, slots) -> z'` applied to every latent input before it is fed
        (evaluation ablations: zero / shuffle across samples / noise). z (n, D) = mu + noise of the n rows fed a
        latent this step, rows (n,) their row ids in [0, N), slots (n,) their latent index k. The recorded `z` is
        the transformed input; `mu` and `noise` stay as computed. None (default) leaves decoding unchanged.
    kv_transform: optional `f(cache, rows)` called once, right before the first forward that feeds a
        `<Medlvr_End>`, when the KV cache holds the prompt, Start and the latent slots of the rows `rows` (N',) in
        cache order; it may edit the cache's per-layer `keys` / `values` (N', H, S, d) in place (evaluation's
        segment / text swaps). Needs `fuse_control=False` (else z_K and End share one forward).
    """
    if kv_transform is not None and cfg.fuse_control:
        raise ValueError("kv_transform needs DecodeConfig(fuse_control=False): the cache must hold z_K before End")
    dev = model.device
    lm = model.model.language_model
    input_ids = prompts["input_ids"].to(dev)
    attn = prompts["attention_mask"].to(dev).long()
    mm_types = prompts.get("mm_token_type_ids")
    if mm_types is None:
        mm_types = (input_ids == model.config.image_token_id).long()
    pixel_values, grid = prompts.get("pixel_values"), prompts.get("image_grid_thw")
    B, G, K = input_ids.shape[0], cfg.num_samples, cfg.k_latent
    N, T_max = B * G, cfg.max_new_tokens
    pad_id = model.generation_config.pad_token_id
    pad_id = model.config.text_config.pad_token_id if pad_id is None else pad_id
    eos = torch.tensor(_eos_ids(model, cfg), device=dev, dtype=torch.long)
    banned = (ids.latent, *cfg.banned_ids)
    lp_temp = cfg.logprob_temperature

    fs = torch.full((B,), cfg.force_start, device=dev) if force_start is None else force_start.to(dev).bool()
    fuse_start = cfg.fuse_control and K > 0 and T_max >= 2 and bool(fs.all())
    if fuse_start:  # the forced <Medlvr_Start> is the prompts' last token: its forward is the prefill's
        input_ids = torch.cat([input_ids, input_ids.new_full((B, 1), ids.start)], dim=1)
        attn = torch.cat([attn, attn.new_ones(B, 1)], dim=1)
        mm_types = torch.cat([mm_types.to(dev), mm_types.new_zeros(B, 1).to(dev)], dim=1)

    if cfg.closed:
        check_attn_implementation(attn_implementation_of(model))
        key_img = (input_ids == model.config.image_token_id).repeat_interleave(G, dim=0)  # (N, S) visual keys
        past_end = torch.zeros(N, dtype=torch.bool, device=dev)  # the row fed a <Medlvr_End>: its queries closed

    # ---- prefill: once per prompt ----
    _sync(dev)
    t_start = time.perf_counter()
    img = None
    if pixel_values is not None:
        img = image_embeddings(model, pixel_values.to(dev), grid.to(dev))
        grid = grid.to(dev)
    pos, deltas = rope_positions(model, input_ids, mm_types.to(dev), attn, grid)
    x = embed_with_images(model, input_ids, img)
    prefill_mask = attn
    if img is not None and text_blind_of(model):  # the prompt text after the image may not read it (item 8)
        check_attn_implementation(attn_implementation_of(model))
        prefill_mask = closed_attention_mask(attn, input_ids == model.config.image_token_id,
                                             text_blind_queries(input_ids, model.config.image_token_id, ids.start),
                                             attn_implementation_of(model), x.dtype)
    out = lm(inputs_embeds=x, attention_mask=prefill_mask, position_ids=pos, use_cache=True)
    cache, h = out.cache, out.last_hidden_state[:, -1]  # h: (B, D), post final norm
    if G > 1:  # G samples share the prefill: repeat cache and per-row state, row b*G + g
        cache.batch_repeat_interleave(G)
        h, attn, deltas = (t.repeat_interleave(G, dim=0) for t in (h, attn, deltas))
    _sync(dev)
    t_prefill = time.perf_counter()

    # ---- per-row state (aligned with the rows in the cache `act`; finished ones are DONE until compaction) ----
    fs = fs.repeat_interleave(G)
    act = torch.arange(N, device=dev)
    kind = torch.where(fs & (K > 0), FORCE_START, SAMPLE)
    can_open = torch.full((N,), K > 0, device=dev)  # the first <Medlvr_Start> opens the latent segment
    k_done = torch.zeros(N, dtype=torch.long, device=dev)

    D = h.shape[-1]
    seq = torch.full((N, T_max), pad_id, dtype=torch.long, device=dev)
    gen_mask = torch.zeros(N, T_max, dtype=torch.bool, device=dev)
    logp = torch.zeros(N, T_max, dtype=torch.float32, device=dev)
    sampled = torch.zeros_like(gen_mask)
    latent_mask = torch.zeros_like(gen_mask)
    z_all, mu_all, noise_all = (torch.zeros(N, K, D, dtype=h.dtype, device=dev) for _ in range(3))
    embed = model.get_input_embeddings()
    step_times, step_rows, step_latent_rows = [], [], []
    n_forwards, n_compactions, t = 0, 0, 0
    if fuse_start:  # position 0 is the prefilled <Medlvr_Start>; h is its hidden state, the first latent's mu
        seq[:, 0], gen_mask[:, 0] = ids.start, True
        kind, can_open, t = torch.full_like(kind, LATENT), torch.zeros_like(can_open), 1

    while t < T_max:
        t_step = time.perf_counter()
        need, lat = kind == SAMPLE, kind == LATENT
        tok = torch.full_like(act, pad_id)
        tok = torch.where(kind == FORCE_START, ids.start, tok)
        tok = torch.where(kind == FORCE_END, ids.end, tok)
        tok = torch.where(lat, ids.latent, tok)
        live = kind != DONE
        if need.any():
            logits = model.lm_head(h[need])  # (n_need, V)
            new = sample_tokens(logits, cfg.temperature, cfg.top_p, banned, _for_rows(generator, act[need]))
            tok[need] = new
            logp[act[need], t] = token_logprobs(logits, new, lp_temp, banned)
            sampled[act[need], t] = True
        if lat.any():
            mu = h[lat]  # hidden state of the previous position: z_k at p comes from H[p-1]
            eps = _latent_noise(mu, cfg, _for_rows(generator, act[lat]))
            z = mu + eps
            rows, slot = act[lat], k_done[lat]
            if latent_transform is not None:
                z = latent_transform(z, rows, slot).to(mu.dtype)
            mu_all[rows, slot], z_all[rows, slot], noise_all[rows, slot] = mu, z, eps
            latent_mask[rows, t] = True
        seq[act, t] = tok  # finished rows still in the cache write pad over pad
        gen_mask[act, t] = live

        # transitions to the next input's mode
        opens = (kind == FORCE_START) | (need & can_open & (tok == ids.start))
        k_done = k_done + lat.long()
        next_kind = torch.full_like(kind, SAMPLE)
        next_kind = torch.where(opens | (lat & (k_done < K)), LATENT, next_kind)
        next_kind = torch.where(lat & (k_done == K), FORCE_END, next_kind)
        can_open = can_open & ~opens
        finished = need & torch.isin(tok, eos)
        next_kind = torch.where(finished | ~live, DONE, next_kind)
        live = next_kind != DONE
        if cfg.time_steps:
            step_rows.append(int(act.numel()))
            step_latent_rows.append(int(lat.sum()))
        n_live = int(live.sum())  # the step's one host sync for row bookkeeping
        if t == T_max - 1 or n_live == 0:
            if cfg.time_steps:
                _sync(dev)
                step_times.append(time.perf_counter() - t_step)
            break

        # one incremental forward over the unfinished rows, text and latent rows together
        x = embed(tok)
        if lat.any():
            x[lat] = z.to(x.dtype)
        kind = next_kind
        fed = tok  # the token each row in the cache is fed now (closed mode: who has passed <Medlvr_End>)
        if n_live < act.numel() and n_live <= cfg.compact_ratio * act.numel():  # one gather for many finished rows
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            n_compactions += 1
            act, x, attn, deltas, kind, k_done, can_open, live, fed = (
                v[keep] for v in (act, x, attn, deltas, kind, k_done, can_open, live, tok)
            )
            if cfg.closed:
                key_img, past_end = key_img[keep], past_end[keep]
        x = x[:, None]
        if cfg.closed:
            past_end = past_end | (fed == ids.end)
            q_closed = past_end[:, None]
        # every live row feeds its last latent now and a text step follows <Medlvr_End>: [z_K, End] in one forward
        if cfg.fuse_control and t + 2 < T_max and bool(((kind == FORCE_END) | ~live).all()):
            x = torch.cat([x, embed(torch.full_like(act, ids.end))[:, None]], dim=1)
            t += 1
            seq[act, t], gen_mask[act, t] = torch.where(live, ids.end, pad_id), live
            kind = torch.where(live, SAMPLE, DONE)
            if cfg.closed:
                q_closed = torch.cat([q_closed, torch.ones_like(q_closed)], dim=1)
                past_end = torch.ones_like(past_end)
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], x.shape[1])], dim=1)
        step_mask = attn
        if cfg.closed:
            key_img = torch.cat([key_img, key_img.new_zeros(key_img.shape[0], x.shape[1])], dim=1)
            if bool(q_closed.any()):
                step_mask = closed_attention_mask(attn, key_img, q_closed, attn_implementation_of(model), x.dtype)
        if kv_transform is not None and bool((fed == ids.end).any()):
            kv_transform(cache, act)
            kv_transform = None  # once: the segment is closed
        out = lm(
            inputs_embeds=x,
            attention_mask=step_mask,
            position_ids=step_positions(attn, deltas, x.shape[1]),
            cache=cache,
            use_cache=True,
        )
        h = out.last_hidden_state[:, -1]
        n_forwards += 1
        t += 1
        if cfg.time_steps:
            _sync(dev)
            step_times.append(time.perf_counter() - t_step)

    _sync(dev)
    t_end = time.perf_counter()
    T = t + 1
    return LatentDecodeOutput(
        sequences=seq[:, :T],
        gen_mask=gen_mask[:, :T],
        logprobs=logp[:, :T],
        sampled_mask=sampled[:, :T],
        latent_mask=latent_mask[:, :T],
        z=z_all,
        mu=mu_all,
        noise=noise_all,
        n_latent=latent_mask[:, :T].sum(-1),
        prompt_index=torch.arange(B, device=dev).repeat_interleave(G),
        logprob_temperature=lp_temp,
        closed=cfg.closed,
        n_steps=T,
        n_prefill_forwards=1,
        n_decode_forwards=n_forwards,
        timings={
            "prefill_s": t_prefill - t_start,
            "decode_s": t_end - t_prefill,
            "total_s": t_end - t_start,
        },
        step_times=step_times,
        step_rows=step_rows,
        step_latent_rows=step_latent_rows,
        n_cache_compactions=n_compactions,
    )
