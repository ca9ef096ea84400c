"""Jobs the schedule and sensors launch: one run per dataset partition, then one publish run."""

import dagster as dg


corpus_dataset_job = dg.define_asset_job(
    "corpus_dataset_job",
    selection=dg.AssetSelection.assets("raw_dataset", "normalized_images", "roi_annotations", "qa_pairs"),
    description="One dataset: discover -> ingest (images + ROIs) -> QA pairs, with its blocking checks.")

knowledge_graph_job = dg.define_asset_job(
    "knowledge_graph_job", selection=dg.AssetSelection.assets("knowledge_graph"),
    description="The knowledge graph every dataset's QA pairs draw distractors and facts from (before the datasets).")

corpus_publish_job = dg.define_asset_job(
    "corpus_publish_job", selection=dg.AssetSelection.groups("corpus_publish"),
    description="Dedup groups, decontamination, splits, shards + manifest and card over every built dataset.")
