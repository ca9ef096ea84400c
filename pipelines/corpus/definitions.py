"""Everything of the corpus domain as one `Definitions` (merged into `medlvr.pipelines.definitions`)."""

import dagster as dg

from medlvr.pipelines.corpus.assets import CORPUS_ASSETS
from medlvr.pipelines.corpus.checks import CORPUS_CHECKS
from medlvr.pipelines.corpus.jobs import corpus_dataset_job, corpus_publish_job, knowledge_graph_job
from medlvr.pipelines.corpus.qa_checks import QA_CHECKS
from medlvr.pipelines.corpus.resources import default_resources
from medlvr.pipelines.corpus.schedules import CORPUS_SCHEDULES
from medlvr.pipelines.corpus.sensors import CORPUS_SENSORS

corpus_defs = dg.Definitions(assets=CORPUS_ASSETS, asset_checks=[*CORPUS_CHECKS, *QA_CHECKS],
                             jobs=[corpus_dataset_job, corpus_publish_job, knowledge_graph_job],
                             schedules=CORPUS_SCHEDULES,
                             sensors=CORPUS_SENSORS, resources=default_resources())
