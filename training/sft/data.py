"""Corpus shards as a deterministic, resumable, rank-sharded stream (pyarrow; nothing loaded whole).

Order of one epoch (`epoch_blocks`): the row groups of all `part-*.parquet` files of the split, permuted with
`seed + epoch`; inside a row group, rows permuted with `(seed, epoch, block)` (a block shuffle: a row group is
the unit that is read). Without `shuffle`, file order. The position is `DataPosition(epoch, index)`: rows of the
epoch's order already consumed by ALL ranks together. A micro-batch takes the next `micro_batch * world` rows
(after the question-type filter); rank r keeps rows [r*B, (r+1)*B) of them. Resuming skips whole row groups by
their row counts (metadata only) and rows inside the first one, so it reads no more than one row group.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from medlvr.corpus.shards import IMAGE_COLUMN


@dataclass
class DataPosition:
    epoch: int = 0
    index: int = 0  # rows of this epoch's order consumed (all ranks, filtered-out rows included)

    def to_dict(self) -> dict:
        return asdict(self)


def shard_files(corpus: str | Path, split: str) -> list[Path]:
    """`<corpus>/shards/<split>/part-*.parquet` (or `<corpus>/<split>/...` when given the shards folder)."""
    corpus = Path(corpus)
    for d in (corpus / "shards" / split, corpus / split):
        files = sorted(d.glob("part-*.parquet"))
        if files:
            if IMAGE_COLUMN not in pq.read_schema(files[0]).names:  # shard schema 1 named it image_png (and `val`)
                raise ValueError(f"{files[0]}: shards of an older schema (no `{IMAGE_COLUMN}` column; schema 1 had "
                                 "`image_png` and a `val` split): rebuild the corpus with `medlvr build-corpus`")
            return files
    raise FileNotFoundError(f"no shards for split {split!r} under {corpus} (expected shards/{split}/part-*.parquet)")


class ShardStream:
    def __init__(self, files: Sequence[Path], *, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1,
                 question_types: Sequence[str] = (), position: DataPosition | None = None):
        self.files = [Path(f) for f in files]
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.question_types = set(question_types)
        self.blocks = [(fi, g, pq.ParquetFile(f).metadata.row_group(g).num_rows)
                       for fi, f in enumerate(self.files) for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
        self.rows_per_epoch = sum(n for *_, n in self.blocks)
        if self.rows_per_epoch == 0:
            raise ValueError(f"shards {self.files} have no rows")
        self.position = position or DataPosition()
        self._it: Iterator | None = None

    def epoch_blocks(self, epoch: int) -> list[int]:
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return order.tolist()

    def _rows_in_block(self, epoch: int, b: int) -> list[dict]:
        fi, g, n = self.blocks[b]
        rows = pq.ParquetFile(self.files[fi]).read_row_group(g).to_pylist()
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, b, 1]).permutation(n)
            rows = [rows[i] for i in perm]
        return rows

    def _global(self) -> Iterator[tuple[int, int, dict]]:
        """(epoch, index after this row, row) in the global order, from the current position, forever."""
        epoch, start = self.position.epoch, self.position.index
        while True:
            seen = 0
            for b in self.epoch_blocks(epoch):
                n = self.blocks[b][2]
                if seen + n <= start:  # skipped by metadata alone
                    seen += n
                    continue
                rows = self._rows_in_block(epoch, b)
                for j in range(max(0, start - seen), n):
                    yield epoch, seen + j + 1, rows[j]
                seen += n
            epoch, start = epoch + 1, 0

    def next_rows(self, micro_batch: int) -> list[dict]:
        """This rank's rows of the next micro-batch; advances the shared position by micro_batch * world rows."""
        if self._it is None:
            self._it = self._global()
        taken: list[dict] = []
        while len(taken) < micro_batch * self.world:
            epoch, idx, row = next(self._it)
            self.position = DataPosition(epoch, idx) if idx < self.rows_per_epoch else DataPosition(epoch + 1, 0)
            if self.question_types and row["question_type"] not in self.question_types:
                continue
            taken.append(row)
        return taken[self.rank * micro_batch:(self.rank + 1) * micro_batch]
