"""The MedLVR Dagster code location: `dagster dev` (from the repository root, with workspace.yaml) serves `defs`.

Domains are folders (`pipelines/corpus/`, later `pipelines/training/`, `pipelines/evaluation/`), each exposing
one `Definitions`, merged here. Heavy ML libraries (torch, transformers) are never imported at module level:
the code server and every step process import this module.

GPU work goes into the `gpu` concurrency pool (`GPU_POOL`, limit 1: see pipelines/dagster_home/dagster.yaml and
pipelines/README.md), e.g. `@dg.asset(pool=GPU_POOL, ...)` on the training assets.
"""

import warnings

import dagster as dg

# Partitioned asset checks are a preview feature in 1.13 (they work; the warning at definition time is noise).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    from pipelines.corpus.definitions import corpus_defs

GPU_POOL = "gpu"

defs = dg.Definitions.merge(corpus_defs)
