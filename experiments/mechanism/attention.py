"""Where does the ANSWER read from? Attention of the position that predicts the answer letter (docs/mechanism.md).

For a trained mechanism checkpoint and held-out samples (batch of one, greedy latent decoding with the model's K,
then one teacher-forced eager-attention forward with the recorded latents patched in, as evaluation.attention
does): the attention mass of the query that predicts the first answer token (the `<Medlvr_End>` position; the
last prompt position when K = 0) on (a) all image tokens, (b) the lesion cell's token, (c) the K latent slots,
per layer, averaged over heads and samples.

    python experiments/mechanism/attention.py --results experiments/mechanism/results.json \
        [--variants roi_vlpo noroi_grpo vanilla_grpo] [--n 50]
writes `attention` into the results JSON (and prints a table).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mechanism_jobs import heldout_samples, load_heldout  # the experiment modules beside this one
from mechanism_report import summary_stats
from medlvr.corpus.sample_data.synthetic_grounding import INSTRUCTION
from medlvr.evaluation.attention import eager_attention, rollout_attentions
from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.model import load_checkpoint
from medlvr.training.sft.collate import set_pixel_budget
from medlvr.training.vlpo.data import build_prompt_batch


@torch.no_grad()
def answer_attention(model_dir: str, items: list[dict], k: int, pixels: dict) -> dict:
    model, processor, ids = load_checkpoint(model_dir)
    model.eval()
    set_pixel_budget(processor, pixels["min"], pixels["max"])
    per_layer = None
    n = 0
    with eager_attention(model):
        for s, it in zip(heldout_samples(items), items):
            enc = build_prompt_batch(processor, [s], INSTRUCTION).inputs
            out = latent_generate(model, enc, ids, DecodeConfig(k_latent=k, max_new_tokens=(k + 2 if k else 0) + 1,
                                                                force_start=True))
            res, seq, L, grid, n_gen = rollout_attentions(model, enc, out)
            q = L + k + 1 if k else L - 1  # predicts the first answer token
            img_pos = (seq[0] == model.config.image_token_id).nonzero().squeeze(1)
            gw = int(grid[0, 2]) // 2
            x0, y0 = it["box"][0], it["box"][1]
            cell = int(y0 // (it["height"] / (int(grid[0, 1]) // 2))) * gw + int(x0 // (it["width"] / gw))
            layers = []
            for a in res.attentions:
                aq = a[0][:, q].float().mean(0)  # (S,) over heads
                layers.append([float(aq[img_pos].sum()), float(aq[img_pos[cell]]),
                               float(aq[L + 1:L + 1 + k].sum()) if k else 0.0])
            t = torch.tensor(layers)
            per_layer = t if per_layer is None else per_layer + t
            n += 1
    per_layer = per_layer / n
    mean = per_layer.mean(0).tolist()
    return {"n": n, "k": k, "image": mean[0], "lesion": mean[1], "latent": mean[2],
            "per_layer": {"image": per_layer[:, 0].tolist(), "lesion": per_layer[:, 1].tolist(),
                          "latent": per_layer[:, 2].tolist()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="experiments/mechanism/results.json")
    ap.add_argument("--variants", nargs="+", default=["vanilla_grpo", "noroi_grpo", "roi_vlpo", "roi_anneal_vlpo"])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    path = Path(a.results)
    res = json.loads(path.read_text())
    cfg = res["config"]
    items = load_heldout(Path(cfg["work_dir"]) / "data")[:a.n]
    out = {}
    for v in a.variants:
        per_seed = {}
        for s, r in res["runs"][v].items():
            per_seed[s] = answer_attention(r["rl"]["model_dir"], items, r["sft"]["k"], cfg["pixels"])
        out[v] = {"per_seed": per_seed,
                  **{key: summary_stats([p[key] for p in per_seed.values()]) for key in ("image", "lesion", "latent")}}
        print(v, {key: f"{out[v][key]['mean']:.3f} ± {out[v][key]['std']:.3f}" for key in ("image", "lesion", "latent")},
              flush=True)
    res["attention"] = out
    path.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
