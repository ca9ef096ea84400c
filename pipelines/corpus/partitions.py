"""One partition per catalog dataset; adding a catalog YAML adds a partition."""

import dagster as dg

from medlvr.corpus.catalog import load_catalog

DATASET_PARTITIONS = dg.StaticPartitionsDefinition(list(load_catalog()))
