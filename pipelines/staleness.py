"""Which assets are up to date, read from what the Dagster instance recorded, through Dagster's public API only.

Dagster's stale-status resolver (the UI's "Stale" badge) is internal, so the main job applies the same rules to what
Dagster records with every materialisation (its tags `dagster/code_version`, `dagster/data_version`,
`dagster/input_data_version/<upstream>`). An asset, or one partition of it, is up to date when

  - it has a materialisation;
  - the code version recorded with it is the asset's code version now (`medlvr.pipelines.code_version`);
  - every unpartitioned upstream's data version now is the one recorded as its input;
  - no materialised partition of a partitioned upstream (the same partition for a partitioned asset, every
    partition for an unpartitioned one) was materialised since with a new data version;
  - every materialised upstream it reads is itself up to date (a stale upstream makes what it feeds stale).

One `Staleness` reads the instance as it is; it caches what it read, so make a new one after a run.
"""

from __future__ import annotations

from functools import cache

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version/{}"  # .format(upstream key's user string)


class Staleness:
    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.instance = instance
        self.specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
        self.latest = cache(self._latest)
        self.up_to_date = cache(self._up_to_date)

    def _latest(self, key: dg.AssetKey, partition: str | None = None, before: int | None = None):
        """The newest materialisation record of `key` (its `partition`), before storage id `before` if given."""
        records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None,
                                               before_storage_id=before)
        records = self.instance.fetch_materializations(records_filter, limit=1).records
        return records[0] if records else None

    def data_version(self, key: dg.AssetKey, partition: str | None = None) -> str | None:
        """The data version recorded with the newest materialisation of `key` (its `partition`), or None."""
        return _tags(self.latest(key, partition)).get(DATA_VERSION_TAG)

    def _up_to_date(self, key: dg.AssetKey, partition: str | None = None) -> bool:
        record = self.latest(key, partition)
        if record is None:
            return False
        tags, spec = _tags(record), self.specs[key]
        if spec.code_version is not None and tags.get(CODE_VERSION_TAG) != spec.code_version:
            return False
        for dep in spec.deps:
            upstream = self.specs.get(dep.asset_key)
            if upstream is None:  # not defined here (an external asset): nothing to compare
                continue
            if upstream.partitions_def is None:
                recorded = tags.get(INPUT_DATA_VERSION_TAG.format(dep.asset_key.to_user_string()))
                if recorded != self.data_version(dep.asset_key) or not self.up_to_date(dep.asset_key):
                    return False
                continue
            partitions = [partition] if spec.partitions_def is not None else upstream.partitions_def.get_partition_keys()
            for p in partitions:
                newest = self.latest(dep.asset_key, p)
                if newest is None:  # never materialised: Dagster does not count a missing upstream partition
                    continue
                if newest.storage_id > record.storage_id and _tags(newest).get(DATA_VERSION_TAG) != \
                        _tags(self.latest(dep.asset_key, p, record.storage_id)).get(DATA_VERSION_TAG):
                    return False
                if not self.up_to_date(dep.asset_key, p):
                    return False
        return True


def _tags(record) -> dict:
    return dict(record.asset_materialization.tags or {}) if record is not None else {}
