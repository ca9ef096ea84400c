"""The MedLVR Dagster code location: `dagster dev` (from the repository root, with workspace.yaml) serves `defs`.

Domains are folders (`pipelines/corpus/`, `pipelines/training/`, `pipelines/evaluation/`), each exposing
one `Definitions`, merged here. Heavy ML libraries (torch, transformers) are never imported at module level:
the code server and every step process import this module.

Every asset has a code version (`medlvr.pipelines.code_version`: a hash of the library and pipeline packages it
runs), so Dagster's staleness marks assets stale when their code changes; the corpus assets declare theirs,
`CODE_VERSIONS` below gives one to the assets of the other domains by group.

GPU work goes into the `gpu` concurrency pool (limit 1: see pipelines/dagster_home/dagster.yaml and
pipelines/README.md), e.g. `@dg.asset(pool="gpu", ...)` on the training assets.
"""

import warnings

import dagster as dg

from medlvr.corpus.package_data import shipped_config
from medlvr.pipelines.code_version import files_version, package_code_version

# Partitioned asset checks are a preview feature in 1.13 (they work; the warning at definition time is noise).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    from medlvr.pipelines.corpus.definitions import corpus_defs

from medlvr.pipelines.evaluation import evaluation_defs  # noqa: E402
from medlvr.pipelines.training.assets import TRAINING_ASSETS  # noqa: E402
from medlvr.pipelines.training.checks import TRAINING_CHECKS  # noqa: E402
from medlvr.pipelines.training.logs import trainer_pipes_client  # noqa: E402
from medlvr.pipelines.training.vlpo_assets import VLPO_ASSETS  # noqa: E402

# Jobs the main job (pipelines/main_job.py) launches; in the UI the same assets can be materialised from the graph.
training_job = dg.define_asset_job("training_job", selection=dg.AssetSelection.assets(
    "roi_sft_checkpoint", "vlpo_checkpoint"), description="ROI-SFT, then VLPO from its checkpoint.")
evaluation_predictions_job = dg.define_asset_job(
    "evaluation_predictions_job", selection=dg.AssetSelection.assets("evaluation_predictions"),
    description="Predictions of every configured model on one benchmark (partition).")
evaluation_report_job = dg.define_asset_job(
    "evaluation_report_job", selection=dg.AssetSelection.assets("evaluation_report"),
    description="Scores every prediction file and writes report.md / report.html.")

training_defs = dg.Definitions(assets=[*TRAINING_ASSETS, *VLPO_ASSETS], asset_checks=TRAINING_CHECKS,
                               jobs=[training_job, evaluation_predictions_job, evaluation_report_job],
                               resources={"pipes_subprocess_client": trainer_pipes_client()})
# asset group -> the packages its assets run (an asset that declares its own code version keeps it)
# Each group's code: its own packages and every package below it in the layers, plus the shipped default configs
# its steps read (the main job runs them), so that a change to any of these marks the group's assets stale.
CODE_VERSIONS = {
    "training": (("medlvr.corpus", "medlvr.training", "medlvr.pipelines.training"),
                 (shipped_config("sft_tiny.yaml"), shipped_config("vlpo_tiny.yaml"))),
    "evaluation": (("medlvr.corpus", "medlvr.training", "medlvr.evaluation", "medlvr.pipelines.evaluation"),
                   (shipped_config("eval_demo.yaml"), shipped_config("eval_sample.yaml"))),
}


def _with_code_version(spec: dg.AssetSpec) -> dg.AssetSpec:
    if spec.code_version is not None or spec.group_name not in CODE_VERSIONS:
        return spec
    packages, configs = CODE_VERSIONS[spec.group_name]
    return spec.replace_attributes(code_version=f"{package_code_version(*packages)}-{files_version(*configs)}")


with warnings.catch_warnings():  # map_asset_specs is a 1.13 preview feature (it works; the warning is console noise)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    defs = dg.Definitions.merge(corpus_defs, training_defs, evaluation_defs).map_asset_specs(func=_with_code_version)
