"""Stage 1: ROI-supervised fine-tuning (docs/method.md §3) on the corpus shards.

    config.py   frozen dataclasses + YAML / override loading (variants are config only)
    data.py     deterministic, resumable, rank-sharded shard stream
    collate.py  rows -> processor batch + completion (<Medlvr_Start> K latents <Medlvr_End> answer) + labels + ROI boxes
    losses.py   pure loss functions (sums; the recipe normalises globally)
    forward.py  self-fed (bptt / detach) and teacher-forced latent forward, ROI targets from the same image pass
    recipe.py   setup -> train -> save; `python -m medlvr.training.sft.recipe --config FILE [--set k=v ...]`
    testing.py  sample corpus + tiny config for tests, the demo and benchmarks

The optimizer / DeepSpeed / checkpoint side is `medlvr.training.engine`, shared with Stage 2.
"""
