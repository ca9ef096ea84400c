"""One partition per catalog dataset (31 today); adding a catalog YAML adds a partition."""

import dagster as dg

from medlvr.corpus.catalog import load_catalog

DATASET_PARTITIONS = dg.StaticPartitionsDefinition(list(load_catalog()))
