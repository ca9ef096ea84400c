"""Perceptual hashing, a Hamming-radius index and duplicate groups across datasets (docs/datasets.md §4 and §6.7).

* Exact duplicates share an `image_id` (sha1 of the normalised pixel array, computed at ingestion).
* Near duplicates: 64-bit perceptual hashes within a Hamming radius (default 4) across ALL datasets, plus a
  looser radius (default 8) between dataset pairs that are known to reuse each other's images.
* Groups are union-find components; a group id is the smallest image_id of the group (deterministic). The groups
  are split units (corpus/splits.py): a duplicate group never straddles two splits.

Hashes are Python ints in [0, 2**64); bit 63 is the first coefficient/comparison in row-major order.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.fft
from PIL import Image

HASH_BITS = 64
DEFAULT_RADIUS = 4
DEFAULT_OVERLAP_RADIUS = 8

# Datasets that reuse each other's images (docs/datasets.md §4). Every pair inside one tuple is a "known-overlap pair"
# that is compared with the looser radius; pairs of images from the SAME dataset never use it. Ids are catalog
# ids; ids that are not ingested (kits19, kits21) are harmless and catch a KiTS19/21 copy if one is added.
#   - ISIC 2018 Task 3 = HAM10000, and ISIC Task 1 images overlap HAM.
#   - RSNA Pneumonia, SIIM-ACR and ChestX-Det reuse NIH ChestX-ray14 images; nih_bbox is NIH itself.
#   - The Training400/AMD copy bundled with REFUGE is ADAM.
#   - KiTS19 is a subset of KiTS21 and of KiTS23.
# (MSD Task03_Liver = LiTS and Task01_BrainTumour ⊂ BraTS are excluded by the catalog, so they are not listed.)
KNOWN_OVERLAP_GROUPS: tuple[tuple[str, ...], ...] = (
    ("isic2018", "ham10000"),
    ("rsna_pneumonia", "siim_acr", "chestx_det", "nih_bbox"),
    ("refuge", "adam"),
    ("kits23", "kits21", "kits19"),
)


def overlap_pairs(groups: Iterable[Iterable[str]] = KNOWN_OVERLAP_GROUPS) -> frozenset[frozenset[str]]:
    """All unordered dataset pairs inside each overlap group, as frozensets of two ids."""
    return frozenset(frozenset(p) for g in groups for p in combinations(sorted(set(g)), 2))


# ----------------------------------------------------------------------------------------------- hashing

def to_grey(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) array of any numeric dtype -> (H, W) float32 luma (ITU-R 601, as PIL's "L").
    Alpha (4th channel) is ignored; a 2-channel image uses its first channel."""
    a = np.asarray(img)
    if a.ndim == 3:
        if a.shape[2] >= 3:
            a = a[..., 0].astype(np.float32) * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
        else:
            a = a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a 2-D grey or (H, W, C) colour image, got shape {np.shape(img)}")
    return a.astype(np.float32, copy=False)


def _resize(grey: np.ndarray, w: int, h: int) -> np.ndarray:
    """Antialiased (Lanczos) resize of a float32 (H, W) array to (h, w)."""
    pil = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))  # mode "F"
    return np.asarray(pil.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float64)


def _bits_to_int(bits: np.ndarray) -> int:
    """Flat boolean array of 64 bits (first = most significant) -> int."""
    out = 0
    for b in bits.ravel():
        out = (out << 1) | int(b)
    return out


def phash(img: np.ndarray) -> int:
    """64-bit DCT perceptual hash.

    grey -> 32x32 Lanczos resize -> 2-D DCT-II (orthonormal) -> top-left 8x8 low-frequency block (64 values,
    row-major). The median is taken over the 63 AC coefficients (the DC term, i.e. mean brightness, is left out),
    and bit i = coefficient i > median. The DC slot is always 0, so 63 bits carry information; a flat image hashes
    to 0. Invariant to brightness scale and offset, and to the dtype (8- or 16-bit)."""
    small = _resize(to_grey(img), 32, 32)
    coeffs = scipy.fft.dctn(small, type=2, norm="ortho")[:8, :8].ravel()
    ac = coeffs[1:]
    med = np.median(ac)
    bits = np.zeros(64, dtype=bool)
    bits[1:] = ac > med
    return _bits_to_int(bits)


def dhash(img: np.ndarray) -> int:
    """64-bit difference hash: grey -> 9x8 (w x h) resize -> bit = pixel brighter than its right neighbour."""
    small = _resize(to_grey(img), 9, 8)
    return _bits_to_int(small[:, 1:] > small[:, :-1])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG/JPEG/BMP/TIFF ...) -> array (H, W) or (H, W, C). Multi-frame files: first frame.
    Palette / bilevel / CMYK / LA images are converted to RGB or L first."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode not in ("L", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB" if len(im.getbands()) > 1 else "L")
        return np.asarray(im)


# ------------------------------------------------------------------------------------------ radius index

def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's hash-based unique is slow on large int arrays)."""
    a = np.sort(a)
    if a.size:
        a = a[np.concatenate(([True], a[1:] != a[:-1]))]
    return a


def _expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths  # where each range begins in the output
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets, lengths) + np.arange(total, dtype=np.int64)


class HashIndex:
    """Hamming-radius search over 64-bit hashes by multi-index hashing (Norouzi et al.), not all pairs.

    The 64 bits are cut into `radius + 1` contiguous bands. Two hashes within distance `radius` differ in at
    most `radius` bands, so by pigeonhole they agree EXACTLY on at least one band: candidates are the items that
    share some band value with the query, and each candidate is verified with a popcount. Per band the index
    keeps the band values sorted (numpy), so a lookup is a binary search.

    Usage: `add` every hash (positions 0, 1, ...), then `query`. Adding after a query rebuilds the sorted bands
    at the next query (O(n log n)), so add in bulk first. Queries with a radius above the build radius are
    refused (the pigeonhole guarantee would not hold).
    """

    def __init__(self, radius: int = DEFAULT_RADIUS, bits: int = HASH_BITS):
        if not 0 <= radius < bits:
            raise ValueError(f"radius must be in [0, {bits}), got {radius}")
        self.radius, self.bits = radius, bits
        n_bands = radius + 1
        edges = np.linspace(0, bits, n_bands + 1).round().astype(int)
        # band b covers bits [lo, hi) counted from the least significant bit
        self.bands = [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
        self._items: list[int] = []
        self._arr: np.ndarray | None = None  # (n,) uint64 hashes
        self._sorted: list[tuple[np.ndarray, np.ndarray]] = []  # per band: (sorted band values, positions)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, h: int) -> int:
        """Add one hash; returns its position (0, 1, ...)."""
        if not 0 <= h < (1 << self.bits):
            raise ValueError(f"hash out of range for {self.bits} bits: {h}")
        self._items.append(int(h))
        self._arr = None
        return len(self._items) - 1

    def add_many(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.add(h)

    def _band_values(self, arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
        mask = np.uint64((1 << (hi - lo)) - 1)
        return (arr >> np.uint64(lo)) & mask

    def _build(self) -> None:
        self._arr = np.array(self._items, dtype=np.uint64)
        self._sorted = []
        for lo, hi in self.bands:
            vals = self._band_values(self._arr, lo, hi)
            order = np.argsort(vals, kind="stable")
            self._sorted.append((vals[order], order.astype(np.int64)))

    def _radius(self, radius: int | None) -> int:
        r = self.radius if radius is None else radius
        if r > self.radius:
            raise ValueError(f"query radius {r} exceeds the index radius {self.radius}")
        if self._arr is None and self._items:
            self._build()
        return r

    def query(self, h: int, radius: int | None = None) -> list[tuple[int, int]]:
        """Items within Hamming `radius` (default: the build radius) of `h`: [(position, distance)] by position."""
        _, p, d = self.query_many([h], radius)
        return [(int(a), int(b)) for a, b in zip(p, d)]

    def query_many(self, hashes: Iterable[int], radius: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised queries. Returns (query index, position, distance) int64 arrays of all matches within
        `radius`, sorted by (query index, position). Pass batches of a few thousand queries."""
        r = self._radius(radius)
        q = np.fromiter((int(h) for h in hashes), dtype=np.uint64)
        empty = np.zeros(0, np.int64)
        if not self._items or q.size == 0:
            return empty, empty, empty
        qs, ps = [], []
        for (lo, hi), (vals, pos) in zip(self.bands, self._sorted):
            keys = self._band_values(q, lo, hi)
            a = np.searchsorted(vals, keys, side="left")
            n = np.searchsorted(vals, keys, side="right") - a
            qs.append(np.repeat(np.arange(q.size, dtype=np.int64), n))
            ps.append(pos[_expand_ranges(a, n)])
        key = _sorted_unique(np.concatenate(qs) * len(self._items) + np.concatenate(ps))
        qi, p = key // len(self._items), key % len(self._items)
        d = np.bitwise_count(self._arr[p] ^ q[qi]).astype(np.int64)
        keep = d <= r
        return qi[keep], p[keep], d[keep]

    def pairs(self, radius: int | None = None, chunk: int = 1 << 21) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Self-join: all pairs of items within `radius`, as (i, j, distance) int64 arrays with i < j, each pair
        once, sorted. Candidates are pairs sharing a band value (a pair sharing k bands is verified k times and
        deduplicated at the end). Work ~ sum over bands of bucket_size**2 / 2, in chunks of
        about `chunk` candidate pairs (a degenerate bucket, e.g. thousands of blank images, is quadratic)."""
        r = self._radius(radius)
        out_i, out_j, out_d = [], [], []
        n = len(self._items)
        if n < 2:
            e = np.zeros(0, np.int64)
            return e, e, e
        for vals, pos in self._sorted:
            new = np.ones(n, dtype=bool)
            new[1:] = vals[1:] != vals[:-1]
            bucket = np.cumsum(new) - 1
            ends = np.append(np.flatnonzero(new)[1:], n)[bucket]  # end (exclusive) of each item's bucket
            t_all = np.arange(n, dtype=np.int64)
            lengths = ends - t_all - 1  # partners after item t in its bucket
            csum = np.cumsum(lengths)
            cuts = np.searchsorted(csum, np.arange(chunk, int(csum[-1]) + chunk, chunk), side="left") + 1
            start = 0
            for stop in np.unique(np.minimum(np.append(cuts, n), n)):
                t, ln = t_all[start:stop], lengths[start:stop]
                start = stop
                if not ln.any():
                    continue
                left = pos[np.repeat(t, ln)]
                right = pos[_expand_ranges(t + 1, ln)]
                d = np.bitwise_count(self._arr[left] ^ self._arr[right])
                keep = d <= r
                out_i.append(np.minimum(left, right)[keep])
                out_j.append(np.maximum(left, right)[keep])
                out_d.append(d[keep].astype(np.int64))
        if not out_i:
            e = np.zeros(0, np.int64)
            return e, e, e
        # a pair sharing several bands was found once per band: keep one (verified pairs are few)
        key = _sorted_unique(np.concatenate(out_i) * n + np.concatenate(out_j))
        i, j = key // n, key % n
        return i, j, np.bitwise_count(self._arr[i] ^ self._arr[j]).astype(np.int64)

    def brute_force(self, h: int, radius: int | None = None) -> list[tuple[int, int]]:
        """Reference answer by comparing with every item (tests only)."""
        r = self.radius if radius is None else radius
        return [(i, hamming(h, x)) for i, x in enumerate(self._items) if hamming(h, x) <= r]


# --------------------------------------------------------------------------------------- duplicate groups

class UnionFind:
    """Union-find over hashable, mutually comparable keys, with path halving. The root of a set is its smallest
    key (duplicate groups are named by their smallest image id). Used here and by corpus.splits."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        p = self.parent
        p.setdefault(x, x)
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def duplicate_groups(rows: Iterable[tuple[str, str, int]], radius: int = DEFAULT_RADIUS,
                     overlap_radius: int = DEFAULT_OVERLAP_RADIUS,
                     overlap_groups: Iterable[Iterable[str]] = KNOWN_OVERLAP_GROUPS) -> dict[str, str]:
    """rows: (image_id, dataset, phash) -> {image_id: group_id}, group_id = smallest image_id of the group.

    Edges of the union-find:
      * exact: rows with the same image_id are one node (whatever their datasets);
      * near: Hamming(phash) <= `radius` between any two images (any datasets, same dataset included);
      * overlap: Hamming <= `overlap_radius` between images of two DIFFERENT datasets that form a known-overlap
        pair (`overlap_groups`).
    Every image_id of `rows` gets an entry (a singleton's group is itself). The strict pass indexes all images;
    the loose pass indexes only the images of overlap datasets, one index per overlap group.
    Note: union-find is transitive, so chains of near matches merge into one group (see splits' report of the
    largest component)."""
    overlap_groups = tuple(tuple(g) for g in overlap_groups)
    ids: list[str] = []
    hashes: list[int] = []
    datasets: list[set[str]] = []
    pos: dict[str, int] = {}
    for image_id, dataset, h in rows:
        i = pos.get(image_id)
        if i is None:
            pos[image_id] = i = len(ids)
            ids.append(image_id)
            hashes.append(int(h))
            datasets.append(set())
        datasets[i].add(dataset)
    # positions sorted by image_id, so union-find roots (smallest position) are the smallest image_ids
    order = sorted(range(len(ids)), key=ids.__getitem__)
    rank = {p: k for k, p in enumerate(order)}
    uf = UnionFind()

    strict = HashIndex(radius)
    strict.add_many(hashes)
    ii, jj, _ = strict.pairs()
    for i, j in zip(ii.tolist(), jj.tolist()):
        uf.union(rank[i], rank[j])

    if overlap_radius > radius:
        pairs = overlap_pairs(overlap_groups)
        for group in overlap_groups:
            members = set(group)
            sub = [i for i in range(len(ids)) if datasets[i] & members]
            if len(sub) < 2:
                continue
            loose = HashIndex(overlap_radius)
            loose.add_many(hashes[i] for i in sub)
            aa, bb, dd = loose.pairs()
            for a, b, d in zip(aa.tolist(), bb.tolist(), dd.tolist()):
                if d <= radius:
                    continue  # strict matches are already merged
                i, j = sub[a], sub[b]
                if any(frozenset((x, y)) in pairs for x in datasets[i] for y in datasets[j] if x != y):
                        uf.union(rank[i], rank[j])

    return {ids[p]: ids[order[uf.find(rank[p])]] for p in range(len(ids))}


def group_sizes(groups: dict[str, str]) -> dict[str, int]:
    """{group_id: number of image_ids} for groups with more than one member."""
    sizes: dict[str, int] = {}
    for g in groups.values():
        sizes[g] = sizes.get(g, 0) + 1
    return {g: n for g, n in sizes.items() if n > 1}


# ----------------------------------------------------------------------------------------- streaming input

def iter_image_hashes(ingest_out: Path, datasets: Iterable[str] | None = None,
                      batch_size: int = 64) -> Iterator[tuple[str, str, int]]:
    """Stream (image_id, dataset, phash) over `<ingest_out>/<dataset>/images.parquet`, datasets in sorted order.

    Reads only the columns image_id, dataset and png, `batch_size` rows at a time (pyarrow iter_batches), so
    memory stays flat whatever the corpus size. Hidden folders (atomic-publish temporaries) are skipped; a named
    dataset without an images table raises FileNotFoundError."""
    root = Path(ingest_out)
    if datasets is None:
        paths = sorted(p for p in root.glob("*/images.parquet") if not p.parent.name.startswith("."))
    else:
        paths = [root / d / "images.parquet" for d in sorted(set(datasets))]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no images table: {missing}")
    for path in paths:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_size, columns=["image_id", "dataset", "png"]):
            cols = batch.to_pydict()
            for image_id, dataset, png in zip(cols["image_id"], cols["dataset"], cols["png"]):
                yield image_id, dataset, phash(decode_image(png))
