"""Materialise the corpus graph the way a backfill does: the knowledge graph, one run per dataset partition,
then one publish run, all in one (ephemeral) instance."""

import importlib.util
import sys
from pathlib import Path

import dagster as dg

from medlvr.pipelines.corpus.assets import CORPUS_ASSETS
from medlvr.pipelines.corpus.checks import CORPUS_CHECKS
from medlvr.pipelines.corpus.qa_checks import QA_CHECKS

DATASET_ASSETS = dg.AssetSelection.assets("raw_dataset", "normalized_images", "roi_annotations", "qa_pairs")
PUBLISH = dg.AssetSelection.groups("corpus_publish")


def materialize_corpus(resources: dict, datasets: list[str], instance: dg.DagsterInstance) -> list:
    everything = [*CORPUS_ASSETS, *CORPUS_CHECKS, *QA_CHECKS]
    results = [dg.materialize(everything, selection=dg.AssetSelection.assets("knowledge_graph"),
                              resources=resources, instance=instance)]
    for ds in datasets:
        results.append(dg.materialize(everything, selection=DATASET_ASSETS, partition_key=ds,
                                      resources=resources, instance=instance))
    results.append(dg.materialize(everything, selection=PUBLISH, resources=resources, instance=instance))
    return results


def check_evaluations(results) -> list:
    return [e for r in results for e in r.get_asset_check_evaluations()]


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are files to run, not package modules)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass in it looks its module up while the module executes
    spec.loader.exec_module(module)
    return module
