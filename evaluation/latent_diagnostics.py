"""Causal latent diagnostics (issue 16; docs/mechanism.md): does the answer USE the latent segment, or only carry it?

For a latent model (K > 0) on a set of samples, greedy decoding (`latent_generate`) is run several ways:

* open / closed: normal inference, and the visual bottleneck at inference (`DecodeConfig(closed=True)`: the
  answer sees the image only through the latent slots and the prompt text);
* donor swap: each row is fed the latent vectors its DONOR row (the next row of the same batch, cyclically)
  computed in the open pass; the donor-following rate is the share of rows whose answer becomes the donor's
  answer, over the rows whose own and donor answers differ (100 %: the latents decide the answer, 0 %: ignored);
* zero at each K of a sweep: accuracy with the K fed-back vectors zeroed next to the normal accuracy at that K,
  so that slot count (where `<Medlvr_End>` sits) and latent content are separated;
* a linear probe from the latent states mu (the K fed-back hidden states, flattened) to the gold answer, fitted
  on one part of the samples and scored on the held-out rest (a deterministic split by sample id): is the answer
  in the latents at all?

Zero and swap replace only the fed-back vectors z_k: the latent positions still attend to the image (in open and
closed inference alike), so a small drop does not prove the answer ignores the latent POSITIONS.

Route swaps (closed inference, issue 27: which route carries the answer?). Right before `<Medlvr_End>` is fed,
the KV-cache entries (every layer) of some columns of each row are replaced by its donor row's:

* segment swap: `<Medlvr_Start>` and the K latent slots (the whole latent segment, not only z_k);
* text swap: the prompt positions after the image (the question text and the template tokens, which read the
  image unless the model is text-blind);
* both.

Under the bottleneck the answer reads the image only through these two sets of positions, so the share of rows
following the donor under each swap attributes the answers to a route (`route_swaps`). The columns are the same
for row and donor when their prompts have the same length after the image (the synthetic task's; otherwise the
text swap takes the donor's entries at the row's columns).

`diagnose(decoder, ...)` works on any `SampleDecoder`; `medlvr evaluate` runs it for every latent model when the
config has a `latent_diagnostics:` section (`run_for_config`), and the report's latent section shows it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medlvr.corpus.evalsets.answers import is_correct, parse_answer
from medlvr.corpus.evalsets.base import Sample
from medlvr.evaluation.inference import encode_batch, load_for_eval
from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.bottleneck import text_blind_queries
from medlvr.training.model import eos_token_ids

ZERO_SHUFFLE_NOTE = ("Zero and swap/shuffle replace only the fed-back latent vectors z_k; the latent positions still "
                     "attend to the image, so they test the content of the fed-back vectors, not the latent "
                     "positions as a route.")


@dataclass
class Decoded:
    """One pass over all samples: parsed answers, correctness, and the latent states / inputs (N, K, D)."""

    parsed: list[str | None]
    correct: list[bool]
    mu: torch.Tensor
    z: torch.Tensor

    @property
    def accuracy(self) -> float:
        return 100.0 * sum(self.correct) / max(1, len(self.correct))


class SampleDecoder:
    """Greedy latent decoding of fixed sample batches. `encode(processor, samples) -> processor batch` builds
    the prompts (evaluation: `inference.encode_batch`; the mechanism experiment: the trainers' prompt)."""

    def __init__(self, model, processor, ids, samples: Sequence[Sample], encode: Callable, *, batch_size: int,
                 max_new_tokens: Callable[[int], int], eos_ids: tuple[int, ...], banned_ids: tuple[int, ...] = ()):
        self.model, self.processor, self.ids, self.eos_ids, self.banned_ids = model, processor, ids, eos_ids, banned_ids
        self.samples = list(samples)
        self.batches = [self.samples[i:i + batch_size] for i in range(0, len(self.samples), batch_size)]
        self.encoded = [encode(processor, b) for b in self.batches]
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def run(self, k: int, *, closed: bool = False, transform: Callable | None = None,
            kv_transform: Callable | None = None) -> Decoded:
        """transform(batch_index) -> latent_transform, or None; kv_transform(batch_index) -> the decoder's
        kv_transform (route swaps; control tokens then get their own forwards), or None."""
        cfg = DecodeConfig(k_latent=k, max_new_tokens=self.max_new_tokens(k), force_start=k > 0, temperature=0.0,
                           eos_token_ids=self.eos_ids, banned_ids=self.banned_ids, closed=closed and k > 0,
                           fuse_control=kv_transform is None)
        tok = self.processor.tokenizer
        drop = set(self.eos_ids) | {tok.pad_token_id}
        parsed, correct, mus, zs = [], [], [], []
        for bi, (samples, enc) in enumerate(zip(self.batches, self.encoded)):
            out = latent_generate(self.model, enc, self.ids, cfg, latent_transform=transform(bi) if transform else None,
                                  kv_transform=kv_transform(bi) if kv_transform else None)
            for r, s in enumerate(samples):
                toks = [int(t) for t, m in zip(out.sequences[r].tolist(), out.gen_mask[r].tolist())
                        if m and int(t) not in drop]
                p = parse_answer(tok.decode(toks, skip_special_tokens=False), s.kind, s.options)
                parsed.append(p)
                correct.append(bool(is_correct(p, s.kind, s.answer)))
            mus.append(out.mu.float().cpu())
            zs.append(out.z.float().cpu())
        return Decoded(parsed, correct, torch.cat(mus), torch.cat(zs))


class SwapLatents:
    """latent_transform feeding row r the latent its donor row computed (donor = next row of the batch)."""

    def __init__(self, donor_z: torch.Tensor):
        self.donor_z = donor_z  # (n, K, D): the open pass's latent inputs of this batch's rows
        self.donor = torch.roll(torch.arange(donor_z.shape[0]), -1)

    def __call__(self, z: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return self.donor_z[self.donor[rows.cpu()], slots.cpu()].to(z)


class SwapKV:
    """kv_transform giving every row its donor row's (next row of the batch) KV entries at the columns `cols`
    (N, S) bool, every layer; columns past S are left alone."""

    def __init__(self, cols: torch.Tensor):
        self.cols = cols

    def __call__(self, cache, rows: torch.Tensor) -> None:
        donor = torch.roll(torch.arange(rows.numel(), device=rows.device), -1)
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)  # (N, H, S, d)
                m = self.cols.to(t.device)[rows][:, :t.shape[2]]
                m = torch.nn.functional.pad(m, (0, t.shape[2] - m.shape[1]))[:, None, :, None]
                setattr(layer, name, torch.where(m, t[donor], t))


def route_columns(input_ids: torch.Tensor, image_token_id: int, start_id: int, k: int) -> dict[str, torch.Tensor]:
    """(N, L + 1 + K) bool columns of the cache before `<Medlvr_End>` (prompt L, Start, K latents, unfused):
    `segment` (Start + latent slots), `text` (prompt positions after the image, not visual) and `both`."""
    n, L = input_ids.shape
    text = torch.cat([text_blind_queries(input_ids, image_token_id, start_id),
                      torch.zeros(n, 1 + k, dtype=torch.bool, device=input_ids.device)], dim=1)
    seg = torch.zeros_like(text)
    seg[:, L:] = True
    return {"segment": seg, "text": text, "both": seg | text}


def route_swaps(decoder: SampleDecoder, k: int, closed: Decoded) -> dict:
    """Closed-mode segment / text / both swaps (module docstring): for each, the donor-following rate over the
    rows whose own (closed) and donor answers differ, `donor_following_<route>`, and the accuracy after it."""
    sizes = [len(b) for b in decoder.batches]

    def swap(route: str) -> Callable:
        # the columns are read from the decoder that runs the batch, when it runs it: a rank's RecordingDecoder
        # forwards to its own SampleDecoder, and a ReplayDecoder (rank 0's merge) never calls it (no model there)
        def kv_transform(bi: int) -> SwapKV:
            cols = route_columns(decoder.encoded[bi]["input_ids"], decoder.model.config.image_token_id,
                                 decoder.ids.start, k)
            return SwapKV(cols[route])
        return kv_transform

    res: dict = {}
    for route in ("segment", "text", "both"):
        swapped = decoder.run(k, closed=True, kv_transform=swap(route))
        f = donor_following(closed.parsed, swapped.parsed, sizes)
        res[f"donor_following_{route}"] = f["donor_following"]
        res[f"accuracy_swap_{route}"] = swapped.accuracy
    res["n_eligible_closed"] = f["n_eligible"]
    return res


def donor_following(own: Sequence, swapped: Sequence, batch_sizes: Sequence[int]) -> dict:
    """Share of rows answering their donor's (own-pass) answer after the swap, over rows whose own and donor
    answers differ; also the share that kept their own answer."""
    donor = []
    start = 0
    for n in batch_sizes:
        idx = list(range(start, start + n))
        donor += [own[idx[(i + 1) % n]] for i in range(n)]
        start += n
    eligible = [i for i in range(len(own)) if own[i] is not None and donor[i] is not None and own[i] != donor[i]]
    follow = sum(swapped[i] == donor[i] for i in eligible)
    keep = sum(swapped[i] == own[i] for i in eligible)
    n = len(eligible)
    return {"donor_following": 100.0 * follow / n if n else None, "kept_own": 100.0 * keep / n if n else None,
            "n_eligible": n}


def heldout_split(sample_ids: Sequence[str], fraction: float = 0.5, seed: int = 0) -> list[bool]:
    """True = held out (probe test set); a deterministic function of (seed, id)."""
    def u(s: str) -> float:
        return int(hashlib.sha1(f"{seed}:{s}".encode()).hexdigest()[:8], 16) / 2 ** 32
    return [u(s) < fraction for s in sample_ids]


def linear_probe(features: torch.Tensor, labels: Sequence[str], test: Sequence[bool], *, l2: float = 1e-3,
                 steps: int = 200) -> dict:
    """Multinomial logistic regression (standardised features, L2, full-batch L-BFGS) on the rows with
    test=False; accuracy on the rows with test=True, next to the majority-class baseline of the test rows."""
    test_t = torch.tensor(list(test), dtype=torch.bool)
    train_t = ~test_t
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    if train_t.sum() < 2 or test_t.sum() < 1 or len(classes) < 2:
        return {"probe_accuracy": None, "probe_majority": None, "probe_n_test": int(test_t.sum())}
    x = features.reshape(features.shape[0], -1).double()
    mean, std = x[train_t].mean(0), x[train_t].std(0).clamp(min=1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train_t] @ w + b, y[train_t]) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (x[test_t] @ w + b).argmax(-1)
    yt = y[test_t]
    majority = int(torch.bincount(y[train_t], minlength=len(classes)).argmax())
    return {"probe_accuracy": 100.0 * float((pred == yt).double().mean()),
            "probe_majority": 100.0 * float((yt == majority).double().mean()), "probe_n_test": int(test_t.sum())}


def diagnose(decoder: SampleDecoder, k: int, k_values: Sequence[int] = (), *, probe_fraction: float = 0.5,
             seed: int = 0, closed_swap: bool = True, opened: Decoded | None = None, routes: bool = True) -> dict:
    """All diagnostics of one latent model at its trained K (module docstring). Accuracies in %.
    `opened`: the open pass at K if the caller already ran it (`decoder.run(k)`); `routes`: also the closed
    segment / text / both swaps (`route_swaps`)."""
    if k < 1:
        raise ValueError("latent diagnostics need a latent model (K >= 1)")
    sizes = [len(b) for b in decoder.batches]
    opened = decoder.run(k) if opened is None else opened
    res: dict = {"k": k, "n": len(decoder.samples), "accuracy_open": opened.accuracy}
    closed = decoder.run(k, closed=True)
    res["accuracy_closed"] = closed.accuracy
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def swap(bi):
        return SwapLatents(opened.z[offsets[bi]:offsets[bi] + sizes[bi]])

    swapped = decoder.run(k, transform=swap)
    res["accuracy_swap"] = swapped.accuracy
    res.update(donor_following(opened.parsed, swapped.parsed, sizes))
    if closed_swap:
        cs = decoder.run(k, closed=True, transform=swap)
        f = donor_following(closed.parsed, cs.parsed, sizes)
        res["donor_following_closed"] = f["donor_following"]
        res["accuracy_swap_closed"] = cs.accuracy
    if routes:  # which route carries the closed answer: segment / text / both swaps (route_swaps)
        res.update(route_swaps(decoder, k, closed))
    zero = decoder.run(k, transform=lambda bi: (lambda z, rows, slots: torch.zeros_like(z)))
    res["accuracy_zero"] = zero.accuracy
    res["drop_zero"] = opened.accuracy - zero.accuracy
    sweep = {}
    for kk in sorted(set(k_values) | {k}):
        if kk < 1:
            continue
        base = opened if kk == k else decoder.run(kk)
        z = zero if kk == k else decoder.run(kk, transform=lambda bi: (lambda z_, rows, slots: torch.zeros_like(z_)))
        sweep[str(kk)] = {"accuracy": base.accuracy, "accuracy_zero": z.accuracy}
    res["k_sweep"] = sweep
    test = heldout_split([s.sample_id for s in decoder.samples], probe_fraction, seed)
    res.update(linear_probe(opened.mu, [str(s.answer) for s in decoder.samples], test))
    return res


def fmt(v, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def write_json(path: Path, data: dict) -> Path:
    """Atomic write (a killed run leaves the old file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------- `medlvr evaluate` glue


def diagnostics_path(out_dir: Path) -> Path:
    return Path(out_dir) / "latent_diagnostics.json"


def diagnosed_models(cfg) -> list:
    """The models the `latent_diagnostics:` section covers: its `models`, default every latent model (K > 0)."""
    sec = cfg.latent_diagnostics or {}
    names = sec.get("models")
    return [m for m in cfg.models if (m.name in names if names else True) and (m.k_latent or 0) > 0]


def run_for_config(cfg, samples: dict[str, list[Sample]], progress: Callable[[str], None] | None = None,
                   rank: int = 0, world_size: int = 1) -> dict:
    """Diagnose every covered model on the section's benchmarks (default: the main ones, `limit` samples each,
    sorted by id); writes `<out_dir>/latent_diagnostics.json` and returns {model: {benchmark: result}}.

    Sharded (`world_size > 1`, every rank calls it): rank r decodes the whole batches r::world_size of every pass
    and writes them to `rank_diagnostics_path`; returns {}. `merge_rank_diagnostics` (rank 0, after a barrier)
    then computes the results from all ranks' passes, equal to one process's: every row keeps its batch (its
    padding and its swap donor)."""
    sec = cfg.latent_diagnostics or {}
    out: dict = {}
    for spec in diagnosed_models(cfg):
        lm = load_for_eval(spec, cfg.decode)
        out[spec.name] = {}
        for bench in _diagnosed_benchmarks(cfg):
            chosen = _chosen_samples(cfg, samples, bench)
            if world_size > 1:
                chosen = [s for b in _global_batches(chosen, cfg.decode.batch_size)[rank::world_size] for s in b]
            dec = SampleDecoder(lm.model, lm.processor, lm.ids, chosen,
                                lambda proc, b: encode_batch(proc, b, spec.prompt_style)[0],
                                batch_size=cfg.decode.batch_size, max_new_tokens=lambda k: cfg.decode.max_new_tokens,
                                eos_ids=eos_token_ids(lm.model))
            if world_size > 1:
                rec = RecordingDecoder(dec)
                if chosen:
                    _diagnose_with(cfg, rec, spec.k_latent)
                _save_passes(rank_diagnostics_path(cfg.out_dir, rank, world_size, spec.name, bench), rec.passes)
            else:
                out[spec.name][bench] = _diagnose_with(cfg, dec, spec.k_latent)
            if progress:
                progress(f"latent diagnostics {spec.name} {bench}: done")
    if world_size > 1:
        return {}
    write_json(diagnostics_path(cfg.out_dir), out)
    return out


# ------------------------------------------------------------------ sharded diagnostics: record, then merge


def _diagnosed_benchmarks(cfg) -> list[str]:
    return list((cfg.latent_diagnostics or {}).get("benchmarks") or cfg.main_benchmarks)


def _chosen_samples(cfg, samples: dict[str, list[Sample]], bench: str) -> list[Sample]:
    return sorted(samples[bench], key=lambda s: s.sample_id)[:(cfg.latent_diagnostics or {}).get("limit")]


def _global_batches(chosen: Sequence[Sample], batch_size: int) -> list[list[Sample]]:
    """The batches one process decodes (`SampleDecoder`); rank r of W takes batches r::W. Only the last batch can
    be short and it is the last of its rank's, so a rank's concatenated batches re-batch into the same batches."""
    return [list(chosen[i:i + batch_size]) for i in range(0, len(chosen), batch_size)]


def _diagnose_with(cfg, decoder, k: int) -> dict:
    sec = cfg.latent_diagnostics or {}
    return diagnose(decoder, k, sec.get("k_values", ()), probe_fraction=float(sec.get("probe_fraction", 0.5)),
                    seed=int(sec.get("seed", 0)))


class RecordingDecoder:
    """A `SampleDecoder` that keeps every pass `diagnose` asks of it, in order (a rank's share of the passes)."""

    def __init__(self, decoder: SampleDecoder):
        self.decoder, self.passes = decoder, []
        self.samples, self.batches = decoder.samples, decoder.batches

    def __getattr__(self, name: str):  # model, ids, encoded, ...: what `diagnose`'s passes read of the decoder
        return getattr(self.__dict__["decoder"], name)

    def run(self, k: int, **kw) -> Decoded:
        d = self.decoder.run(k, **kw)
        self.passes.append(d)
        return d


class ReplayDecoder:
    """Answers `diagnose`'s passes, in the same order, from the merged passes of all ranks (no model)."""

    def __init__(self, samples: Sequence[Sample], batches: Sequence[Sequence[Sample]], passes: Sequence[Decoded]):
        self.samples, self.batches, self._passes = list(samples), [list(b) for b in batches], list(passes)

    def run(self, k: int, **kw) -> Decoded:
        if not self._passes:
            raise RuntimeError("the rank files hold fewer passes than the diagnostics ask for (another config?)")
        return self._passes.pop(0)


def rank_diagnostics_path(out_dir: Path, rank: int, world_size: int, model: str, bench: str) -> Path:
    return Path(out_dir) / f"latent_diagnostics.rank{rank}-of-{world_size}" / model / f"{bench}.pt"


def _save_passes(path: Path, passes: Sequence[Decoded]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save([{"parsed": d.parsed, "correct": d.correct, "mu": d.mu, "z": d.z} for d in passes], tmp)
    tmp.replace(path)


def merge_rank_diagnostics(cfg, samples: dict[str, list[Sample]], world_size: int) -> dict:
    """Rank 0 after every rank's `run_for_config(..., rank, world_size)`: every pass of every rank merged back into
    one process's order (`merged_passes`), the results computed from them (`diagnose` on a `ReplayDecoder`),
    `<out_dir>/latent_diagnostics.json` written and the rank files removed."""
    import shutil

    out: dict = {}
    for spec in diagnosed_models(cfg):
        out[spec.name] = {}
        for bench in _diagnosed_benchmarks(cfg):
            chosen = _chosen_samples(cfg, samples, bench)
            batches = _global_batches(chosen, cfg.decode.batch_size)
            passes = merged_passes(cfg.out_dir, world_size, spec.name, bench, [len(b) for b in batches])
            out[spec.name][bench] = _diagnose_with(cfg, ReplayDecoder(chosen, batches, passes), spec.k_latent)
    write_json(diagnostics_path(cfg.out_dir), out)
    for r in range(world_size):
        shutil.rmtree(Path(cfg.out_dir) / f"latent_diagnostics.rank{r}-of-{world_size}", ignore_errors=True)
    return out


def merged_passes(out_dir: Path, world_size: int, model: str, bench: str, batch_sizes: Sequence[int]
                  ) -> list[Decoded]:
    """The ranks' recorded passes with their batches interleaved back into one process's order (global batch i
    is local batch i // W of rank i % W)."""
    ranks = []
    for r in range(world_size):
        path = rank_diagnostics_path(out_dir, r, world_size, model, bench)
        if not path.is_file():
            raise FileNotFoundError(f"{path.relative_to(out_dir)}: rank {r} of {world_size} wrote no latent "
                                    "diagnostics (did every rank finish?)")
        ranks.append(torch.load(path, weights_only=True))
    n_passes = {len(p) for r, p in enumerate(ranks) if batch_sizes[r::world_size]}
    if len(n_passes) > 1:
        raise ValueError(f"latent diagnostics {model} {bench}: the ranks recorded {sorted(n_passes)} passes")
    merged = []
    for i in range(n_passes.pop() if n_passes else 0):
        parts = []  # (global batch index, that rank's pass, the batch's rows in it)
        for r, passes in enumerate(ranks):
            start = 0
            for j, n in enumerate(batch_sizes[r::world_size]):
                parts.append((r + j * world_size, passes[i], slice(start, start + n)))
                start += n
        parts.sort(key=lambda x: x[0])
        merged.append(Decoded([p for _, d, sl in parts for p in d["parsed"][sl]],
                              [c for _, d, sl in parts for c in d["correct"][sl]],
                              torch.cat([d["mu"][sl] for _, d, sl in parts]),
                              torch.cat([d["z"][sl] for _, d, sl in parts])))
    return merged


def report_tables(diag: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(headers, rows) of the per-model table and of the K sweep (accuracy / zeroed accuracy per K)."""
    head = ["model", "benchmark", "N", "K", "open %", "closed %", "donor-following %", "donor-following closed %",
            "zeroed %", "zero drop", "probe %", "probe majority %"]
    rows, krows, ks = [], [], set()
    for model, by_bench in diag.items():
        for bench, r in by_bench.items():
            rows.append([model, bench, str(r["n"]), str(r["k"]), fmt(r["accuracy_open"]), fmt(r["accuracy_closed"]),
                         fmt(r.get("donor_following")), fmt(r.get("donor_following_closed")),
                         fmt(r["accuracy_zero"]), fmt(r["drop_zero"]), fmt(r.get("probe_accuracy")),
                         fmt(r.get("probe_majority"))])
            ks |= set(r["k_sweep"])
    kcols = sorted(ks, key=int)
    for model, by_bench in diag.items():
        for bench, r in by_bench.items():
            sw = r["k_sweep"]
            krows.append([model, bench] + [f"{fmt(sw[k]['accuracy'])} / {fmt(sw[k]['accuracy_zero'])}" if k in sw
                                           else "–" for k in kcols])
    return head, rows, ["model", "benchmark"] + [f"K={k}" for k in kcols], krows
