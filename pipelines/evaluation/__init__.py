"""Dagster assets of the evaluation: `evaluation_predictions` (partitioned by benchmark) and the unpartitioned
`evaluation_report`, both downstream of the `roi_sft_checkpoint` and `vlpo_checkpoint` assets (group
"evaluation"). `evaluation_defs` is the domain's Definitions, to be merged into `pipelines/definitions.py`."""

import dagster as dg

from medlvr.pipelines.evaluation.assets import ASSETS, BENCHMARK_PARTITIONS, CHECKS, RESOURCES, EvaluationSettings

evaluation_defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, resources=RESOURCES)

__all__ = ["ASSETS", "RESOURCES", "BENCHMARK_PARTITIONS", "EvaluationSettings", "evaluation_defs"]
