"""Ingestion runner: discover -> load (worker processes) -> normalise -> Parquet, with a rejects table.

Counting rules (checked at the end of every dataset; a mismatch is a bug and raises):
    records_in  == records_out + records_rejected     (a record is out when at least one image was written)
    rois_in     == rois_out + rois_rejected           (ROIs of written images, plus ROIs dropped while loading)
Images rejected inside an accepted record (bad slice, duplicate pixels) are rows of level "image".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import secrets
import time
import traceback
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import numpy as np

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_RECORD_BYTES, record_limit
from medlvr.corpus.paths import clear_path_cache, take_escapes
from medlvr.corpus.adapters.sidecar import whitelist
from medlvr.corpus.catalog import DatasetSpec, official_split_of, patient_of, select
from medlvr.corpus.normalize import NormaliseConfig, check_box, normalise_image
from medlvr.corpus.png import encode_png
from medlvr.corpus.provenance import is_synthetic_sample
from medlvr.corpus.records import (RecordError, RecordRef, Reject, SourceImage, object_id, reason_kind,
                                   relative_reason)
from medlvr.corpus.tables import DatasetWriter, escape_undecodable
from medlvr.corpus.volumes import SliceConfig

# Attributes that code (not sidecars) produces and that carry no identifying information.
SAFE_IMAGE_KEYS = ("slice_role", "sequence", "photometric", "bits_stored", "inverted", "dicom_modality", "phase", "view",
                   "nan_voxels")
SAFE_ROI_KEYS = ("z_range", "z_extent_mm", "n_readers", "fused", "approximate", "given_box", "polygon_box")


REASON_EXAMPLES = 3  # example (path, reason) pairs kept per reason kind in summary.json


def reason_key(stage: str, reason: str) -> str:
    """The summary's grouping of reasons: stage and kind (paths, quoted values and numbers replaced)."""
    return f"{stage}: {reason_kind(reason)}"[:120]


class DatasetMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class IngestConfig:
    """Ingestion settings; a file of them loads with `medlvr.corpus.config.load_config(IngestConfig, path, overrides)`."""

    normalise: NormaliseConfig = NormaliseConfig()
    slices: SliceConfig = SliceConfig()
    workers: int = 1
    patient_salt: str | None = None  # None: $MEDLVR_PATIENT_SALT, else a random salt kept in <out>/.patient_salt
    max_in_flight_per_worker: int = 3  # tasks queued per worker
    records_per_task: int = 4  # at most; fewer when records are slow (see _TaskSizer)
    flush_rows: int = 32  # images per Parquet row group (also capped at 8 MB of PNG bytes): bounds memory
    keep_heap: bool = True  # tune glibc malloc in the processes that decode images (see keep_heap)
    # bytes one record may make the readers decode, and the largest file they open (corpus.limits); a catalog
    # entry's own max_record_bytes wins for its dataset
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # pixels one 2-D image may declare in its header (corpus.limits.check_pixels); a catalog entry's own wins
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self):
        if self.max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be a positive number of bytes, got {self.max_record_bytes}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be a positive number of pixels, got {self.max_image_pixels}")


@dataclass
class DatasetSummary:
    dataset: str
    modality: str
    records_in: int = 0
    records_out: int = 0
    records_rejected: int = 0
    images_out: int = 0
    images_rejected: int = 0
    rois_out: int = 0
    rois_rejected: int = 0
    seconds: float = 0.0
    layout_missing: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # reason kind -> count, the 20 most common
    reason_examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # kind -> a few {path, reason}
    out_dir: str = ""
    # object accounting (docs/datasets.md, "Every source object accounted for"): every annotation object the
    # adapter found ends as written boxes (objects_out) or as ROI reject rows (objects_rejected, by reason);
    # objects_lost counts objects with neither, which the blocking asset check refuses
    objects_in: int = 0
    objects_out: int = 0
    objects_rejected: int = 0
    objects_lost: int = 0
    object_outcomes: dict[str, int] = field(default_factory=dict)  # "written" | "lost" | reason kind -> objects
    objects_lost_examples: list[str] = field(default_factory=list)
    synthetic_sample: bool = False  # the raw folder is the bundled synthetic sample (corpus/provenance.py)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OBJECT_WRITTEN, OBJECT_LOST = "written", "lost: neither a box nor a reject row"
LOST_EXAMPLES = 5


def annotations_of(rois: list[dict]) -> list:
    """What an image says, to tell a conflicting duplicate (same pixels, other labels or boxes) from a copy."""
    return sorted((r["label"], tuple(round(v, 3) for v in r["box_orig"])) for r in rois)


def writer_has(seen_ids: dict, img: dict) -> bool:
    """Whether this image row is the one kept for its pixels (not a duplicate of an earlier one)."""
    first = seen_ids.get(img["image_id"])
    return first is not None and first[0] == f"{img['source_path']}#{img['suffix']}"


def account_objects(res: RecordResult, written: set[str], outcomes: Counter, lost_examples: list[str],
                    root: Path) -> None:
    """Each object of one record gets exactly one outcome: written (a box of it is in rois.parquet), the kind of
    its first ROI reject, or lost (the adapter found it and nothing names it)."""
    rejected: dict[str, str] = {}
    for level, stage, reason, _, oid in res.rejects:
        if level == "roi" and oid and oid not in rejected:
            rejected[oid] = reason_key(stage, relative_reason(reason, root))
    for oid in dict.fromkeys([*res.objects, *rejected, *written]):
        if oid in written:
            outcomes[OBJECT_WRITTEN] += 1
        elif oid in rejected:
            outcomes[rejected[oid]] += 1
        else:
            outcomes[OBJECT_LOST] += 1
            if len(lost_examples) < LOST_EXAMPLES:
                lost_examples.append(escape_undecodable(relative_reason(oid, root)))


def resolve_salt(out_dir: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("MEDLVR_PATIENT_SALT"):
        return os.environ["MEDLVR_PATIENT_SALT"]
    path = Path(out_dir) / ".patient_salt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # write a complete private temp file, then hard-link it into place: the link either creates the salt
        # file whole or fails because another process got there first (then its salt is the one to use)
        tmp = path.with_name(f".patient_salt.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    salt = path.read_text().strip()
    if not salt:
        raise RuntimeError(f"{path} is empty: delete it (no output made with it can be matched) and rerun")
    return salt


def patient_hash(salt: str, dataset: str, raw: str) -> str:
    # surrogateescape: a raw key taken from a non-UTF-8 file name hashes by its bytes (identical for any other)
    return hashlib.sha256(f"{salt}\0{dataset}\0{raw}".encode("utf-8", "surrogateescape")).hexdigest()[:20]


def image_hash(img: np.ndarray) -> str:
    h = hashlib.sha1(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def with_slice_options(spec: DatasetSpec, cfg: IngestConfig) -> DatasetSpec:
    """Volume adapters read SliceConfig.from_dict(spec.options['slices']): the run's caps, dataset overrides win.
    The record limits are settled here too: the catalog entry's max_record_bytes / max_image_pixels, else the run's."""
    slices = {**dataclasses.asdict(cfg.slices), **(spec.options.get("slices") or {})}
    return dataclasses.replace(spec, options={**spec.options, "slices": slices},
                               max_record_bytes=spec.max_record_bytes or cfg.max_record_bytes,
                               max_image_pixels=spec.max_image_pixels or cfg.max_image_pixels)


def _limit_of(spec: DatasetSpec) -> int:
    return spec.max_record_bytes or DEFAULT_MAX_RECORD_BYTES


def _limits_of(spec: DatasetSpec):
    """The record limits of one dataset (bytes, pixels of one image) as a context for its readers."""
    return record_limit(_limit_of(spec), spec.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)


@dataclass
class RecordResult:
    key: str
    source_path: str
    images: list[dict] = field(default_factory=list)
    rois: list[list[dict]] = field(default_factory=list)  # per image
    # (level, stage, reason, path, source_object); source_object is "" for record and image rows
    rejects: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    record_reject: tuple[str, str] | None = None  # (stage, reason)
    rois_in: int = 0
    objects: list[str] = field(default_factory=list)  # the source objects the adapter found (object accounting)


def roi_reject_parts(item: tuple) -> tuple[str, str, str]:
    """(label, reason[, source_object]) as adapters report an object they dropped -> (label, reason, object)."""
    label, reason, *rest = item
    return str(label), str(reason), str(rest[0]) if rest else ""


def fallback_object(src: SourceImage, kind: str, k: int) -> str:
    """The name of an object whose adapter named none: the image (and slice) and the k-th candidate box
    ("object") or dropped object ("dropped") of it, stable for a given source."""
    return object_id(src.source_path, **({"image": src.suffix} if src.suffix else {}), **{kind: k})


def is_annotated(src: SourceImage) -> bool:
    """An image that had annotation objects and is not an explicit negative: it must end with ROIs or be
    rejected (never written as an empty image that reads as a negative)."""
    if src.attributes.get("slice_role") == "negative" or src.attributes.get("negative"):
        return False
    return bool(src.rois or src.roi_rejects)


def _normalise_image(spec: DatasetSpec, ref: RecordRef, src: SourceImage, cfg: IngestConfig, salt: str,
                     result: RecordResult) -> None:
    h, w = np.asarray(src.pixels).shape[:2]
    out, geo, info = normalise_image(src, spec.normalise, cfg.normalise)
    image_id = image_hash(out)
    raw_patient = src.patient if src.patient is not None else ref.patient
    patient = patient_of(spec, src.source_path, raw_patient, ref.key)
    attrs = whitelist({**ref.attributes, **src.attributes}, SAFE_IMAGE_KEYS + spec.attributes)
    spacing = list(src.spacing_mm) if src.spacing_mm else None
    in_plane = spacing[-2:] if spacing and len(spacing) >= 2 else None
    rois, rejects = [], []
    named = []
    for k, item in enumerate(src.roi_rejects):
        label, reason, oid = roi_reject_parts(item)
        oid = oid or fallback_object(src, "dropped", k)
        rejects.append(("roi", "load", f"{label}: {reason}", src.source_path, oid))
        named.append(oid)
    for k, roi in enumerate(src.rois):
        oid = roi.source_object or fallback_object(src, "object", k)
        named.append(oid)
        concept = spec.concept(roi.label)
        if concept is None:
            rejects.append(("roi", "roi", spec.label_reject_reason(roi.label), src.source_path, oid))
            continue
        box, reason, clipped = check_box(roi.box, w, h)
        if reason:
            rejects.append(("roi", "roi", f"{roi.label}: {reason}", src.source_path, oid))
            continue
        area_orig = roi.area_px if roi.area_px is not None else (box[2] - box[0]) * (box[3] - box[1])
        rois.append({
            "image_id": image_id, "dataset": spec.id, "roi_index": len(rois), "label": roi.label,
            "concept_id": concept, "box": list(geo.to_normalised(box)), "box_orig": list(box), "clipped": clipped,
            "origin": roi.origin, "instance": int(roi.instance), "source_object": oid,
            "area_px": float(area_orig * geo.scale_x * geo.scale_y),
            "area_mm2": float(area_orig * in_plane[0] * in_plane[1]) if in_plane else None,
            "parent_label": roi.parent,
            "attributes": json.dumps(whitelist(roi.attributes, SAFE_ROI_KEYS + spec.attributes), sort_keys=True),
        })
    if not rois and is_annotated(src):  # every object rejected: not an image without findings
        result.rois_in += len(src.rois) + len(src.roi_rejects)
        result.objects.extend(dict.fromkeys([*(src.objects or []), *named]))
        result.rejects.extend(rejects)
        result.rejects.append(("image", "roi", f"{src.suffix or 'image'}: annotated image whose every annotation "
                               f"object was rejected", src.source_path, ""))
        return
    window = info.get("window")
    result.images.append({
        "image_id": image_id, "dataset": spec.id, "modality": spec.modality, "body_region": spec.body_region,
        "source_path": src.source_path, "suffix": src.suffix, "record_key": ref.key,
        "patient_key": patient_hash(salt, spec.id, str(patient)),
        "official_split": official_split_of(spec, src.source_path, ref.split),
        "width": geo.out_w, "height": geo.out_h, "channels": 1 if out.ndim == 2 else out.shape[2],
        "orig_width": w, "orig_height": h, "scale_x": geo.scale_x, "scale_y": geo.scale_y, "pad": list(geo.pad),
        "spacing_mm": spacing, "slice_axis": src.slice_axis, "slice_index": src.slice_index,
        "intensity": info["intensity"], "window_low": window[0] if window else None,
        "window_high": window[1] if window else None, "window_name": info.get("window_name"),
        "attributes": json.dumps(attrs, sort_keys=True), "png": encode_png(out, cfg.normalise.png_encoder,
                                                                          cfg.normalise.png_compress_level),
    })
    # committed only now: an image that raised above is accounted by _objects_of_unread instead
    result.rois_in += len(src.rois) + len(src.roi_rejects)
    result.objects.extend(dict.fromkeys([*(src.objects or []), *named]))
    result.rois.append(rois)
    result.rejects.extend(rejects)


def process_record(spec: DatasetSpec, root: Path, ref: RecordRef, cfg: IngestConfig, salt: str) -> RecordResult:
    """Load and normalise one record. Never raises for bad input: problems become rejects."""
    first_path = next(iter(ref.paths.values()), ref.key)
    result = RecordResult(ref.key, first_path)
    limit = _limit_of(spec)
    try:
        with _limits_of(spec):  # every declared size the readers meet is charged against it
            images = ADAPTERS[spec.adapter].load(spec, root, ref)
    except RecordError as e:
        result.record_reject = (e.stage, e.reason)
        for item in e.roi_rejects:  # objects the record had found: each keeps its own reason
            label, reason, oid = roi_reject_parts(item)
            result.rejects.append(("roi", e.stage, f"{label}: {reason}", first_path, oid))
            result.objects.append(oid)
        result.rois_in += len(e.roi_rejects)
        return result
    except MemoryError:  # a size no header declared (a decoder's own buffers): this record only
        result.record_reject = ("load", f"out of memory while loading the record (record limit {limit} bytes, "
                                        f"max_record_bytes)")
        return result
    except Exception as e:  # an adapter bug or an input we did not foresee: keep going, keep the reason
        result.record_reject = ("load", f"unexpected {type(e).__name__}: {e}")
        return result
    if not images:
        result.record_reject = ("load", "record produced no images")
        return result
    for src in images:
        try:
            _normalise_image(spec, ref, src, cfg, salt, result)
        except RecordError as e:
            result.rejects.append(("image", e.stage if e.stage != "load" else "normalise",
                                   f"{src.suffix or 'image'}: {e.reason}", src.source_path, ""))
            _objects_of_unread(src, result, e.reason)
        except MemoryError:
            raise
        except Exception as e:
            result.rejects.append(("image", "normalise", f"{src.suffix or 'image'}: unexpected "
                                   f"{type(e).__name__}: {e}", src.source_path, ""))
            _objects_of_unread(src, result, f"unexpected {type(e).__name__}")
    if not result.images:
        reasons = "; ".join(r[2] for r in result.rejects if r[0] == "image")[:500]
        result.record_reject = ("normalise", f"all {len(images)} images rejected: {reasons}")
    return result


def _objects_of_unread(src: SourceImage, result: RecordResult, why: str) -> None:
    """An image that failed to normalise: its objects become ROI rejects naming the image's reason."""
    items = [(label, reason, oid or fallback_object(src, "dropped", k))
             for k, (label, reason, oid) in enumerate(map(roi_reject_parts, src.roi_rejects))]
    items += [(roi.label, f"image rejected: {why}", roi.source_object or fallback_object(src, "object", k))
              for k, roi in enumerate(src.rois)]
    for label, reason, oid in items:
        result.rejects.append(("roi", "normalise", f"{label}: {reason}"[:300], src.source_path, oid))
        result.objects.append(oid)
    result.objects.extend(src.objects or [])
    result.rois_in += len(src.roi_rejects) + len(src.rois)


# Worker-process state, set once per dataset by the pool initializer (avoids pickling it per record).
_W: dict[str, Any] = {}


def _init_worker(spec, root, cfg, salt):
    _W.update(spec=spec, root=root, cfg=cfg, salt=salt)
    if cfg.keep_heap:
        keep_heap()


def keep_heap() -> None:
    """Stop glibc from handing freed image buffers back to the OS after every record.

    By default large arrays (above a dynamic threshold that starts at 128 KB) are mmapped and unmapped each time,
    and freed heap tops are trimmed, so every decoded image page-faults its memory in afresh: in a freshly forked
    worker that was 1.2 M minor faults and ~18% of its CPU for 500 images; single-process on 1024² DICOMs,
    1.6 M faults and 26% of the wall time. A fixed 32 MB mmap threshold and a 128 MB trim threshold keep the
    buffers in the heap for reuse; peak RSS is unchanged (the same buffers are reused), only not returned
    between records. Process-wide (IngestConfig.keep_heap=False leaves malloc alone); no-op without glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _work(refs: list[RecordRef]) -> tuple[list[RecordResult], float]:
    t0 = time.perf_counter()
    results = [process_record(_W["spec"], _W["root"], ref, _W["cfg"], _W["salt"]) for ref in refs]
    return results, (time.perf_counter() - t0) / max(1, len(refs))


class _TaskSizer:
    """Records per task: several small records share a hand-off (fewer wake-ups in the main process), but a task
    should stay short, or the last tasks leave a worker idle at the end (a 4-volume CT task is ~0.5 s). Sized
    from the running mean seconds per record that the workers report: target_s / mean, within 1..max_records."""

    def __init__(self, max_records: int, target_s: float = 0.05):
        self.max_records, self.target_s = max(1, max_records), target_s
        self.mean_s: float | None = None

    def observe(self, seconds_per_record: float) -> None:
        m = self.mean_s
        self.mean_s = seconds_per_record if m is None else 0.8 * m + 0.2 * seconds_per_record

    @property
    def size(self) -> int:
        if self.mean_s is None:
            return 1  # nothing measured yet: start small
        return int(min(self.max_records, max(1, self.target_s // max(self.mean_s, 1e-6))))


def _chunks(refs: Iterable[RecordRef], sizer: _TaskSizer) -> Iterable[list[RecordRef]]:
    chunk: list[RecordRef] = []
    for ref in refs:
        chunk.append(ref)
        if len(chunk) >= sizer.size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _widen_result_pipe(pool: ProcessPoolExecutor) -> None:
    """Results carry encoded images (~0.1-0.3 MB a record); in a 64 KB pipe each one takes several blocking
    writes, and every block is a context switch on a machine whose cores the workers already fill. A 1 MB pipe
    (Linux F_SETPIPE_SZ) cut the main process's CPU by ~25% on 1024² DICOMs. Private attributes of the executor:
    where they differ (another Python or OS), the default pipe stays."""
    try:
        import fcntl

        fcntl.fcntl(pool._result_queue._reader.fileno(), 1031, 1 << 20)  # 1031 = F_SETPIPE_SZ
    except Exception:
        pass


def _results(spec, root, refs: Iterable[RecordRef], cfg: IngestConfig, salt: str) -> Iterable[RecordResult]:
    """Results in discovery order; with workers > 1 a bounded window of tasks (each up to `records_per_task`
    records, sized by `_TaskSizer`: fewer hand-offs between processes) is in flight. `refs` may be a lazy
    iterator: discovery then runs while the workers process the records already found."""
    if cfg.workers <= 1:
        if cfg.keep_heap:
            keep_heap()
        for ref in refs:
            yield process_record(spec, root, ref, cfg, salt)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    window = max(2, cfg.workers * cfg.max_in_flight_per_worker)
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(spec, root, cfg, salt)) as pool:
        _widen_result_pipe(pool)
        pending: deque = deque()
        sizer = _TaskSizer(cfg.records_per_task)
        tasks = _chunks(refs, sizer)
        for chunk in tasks:
            pending.append(pool.submit(_work, chunk))
            if len(pending) >= window:
                break
        while pending:
            results, seconds_per_record = pending.popleft().result()
            sizer.observe(seconds_per_record)
            yield from results
            nxt = next(tasks, None)
            if nxt is not None:
                pending.append(pool.submit(_work, nxt))


def check_layout(spec: DatasetSpec, root: Path) -> list[str]:
    return [g for g in spec.layout if next(iter(root.glob(g)), None) is None]


def iter_discover(spec: DatasetSpec, root: Path, rejects: list[Reject]) -> Iterable[RecordRef]:
    """Unique records as the adapter finds them; rejects (bad references, duplicate ids, a dataset that cannot
    be read at all) are appended to `rejects`."""
    seen: set[str] = set()
    clear_path_cache()
    take_escapes()  # forget files refused by an earlier discovery
    try:
        items = iter(ADAPTERS[spec.adapter].discover(spec, root))
        while True:
            # annotation tables are files too: none larger than the record limit is opened. The limit is set
            # around each step of the adapter only: this generator must not hold it while suspended in `yield`
            with _limits_of(spec):
                item = next(items, None)
            if item is None:
                break
            if isinstance(item, Reject):
                rejects.append(item)
            elif item.key in seen:
                rejects.append(Reject(spec.id, next(iter(item.paths.values()), item.key), "discover",
                                      f"duplicate record id {item.key!r}", item.key))
            else:
                seen.add(item.key)
                yield item
    except RecordError as e:  # the dataset as a whole is unreadable (e.g. its annotation file is corrupt)
        rejects.append(Reject(spec.id, ".", e.stage, e.reason, "<dataset>"))
    for rel in take_escapes():  # files `walk` refused: each is a record that could not be read
        why = f"symlink resolves outside the dataset root: {rel}"
        # an adapter that indexes files by a walk may already have reported the record (its file was not offered:
        # "missing", "no file matches") or the escape itself: say why once, on that reject
        name, stem = PurePosixPath(rel).name, PurePosixPath(rel).stem
        same = [r for r in rejects if r.source_path == rel or rel in r.reason or
                ("missing" in r.reason and (name in r.reason or r.reason.endswith(stem)))]
        for r in same:
            if "missing" in r.reason:
                r.reason = why
            elif "outside the dataset root" not in r.reason:
                r.reason = f"{why}; {r.reason}"
        if not same:
            rejects.append(Reject(spec.id, rel, "discover", why, rel))


def discover(spec: DatasetSpec, root: Path) -> tuple[list[RecordRef], list[Reject]]:
    rejects: list[Reject] = []
    refs = list(iter_discover(spec, root, rejects))
    return refs, rejects


def ingest_dataset(spec: DatasetSpec, root: Path, out_dir: Path, cfg: IngestConfig = IngestConfig(),
                   progress: bool = False) -> DatasetSummary:
    """Ingest one dataset from `root` into `out_dir/<id>/` atomically; returns the reconciled counts."""
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise DatasetMissing(f"{spec.id}: dataset root {root} does not exist")
    t0 = time.perf_counter()
    spec = with_slice_options(spec, cfg)
    salt = resolve_salt(out_dir, cfg.patient_salt)
    summary = DatasetSummary(spec.id, spec.modality, layout_missing=check_layout(spec, root),
                             synthetic_sample=is_synthetic_sample(root))
    reasons: Counter = Counter()
    discover_rejects: list[Reject] = []
    found = [0]

    def counted(refs):
        for ref in refs:
            found[0] += 1
            yield ref

    writer = DatasetWriter(out_dir, spec.id, cfg.flush_rows)
    examples: dict[str, list[dict[str, str]]] = {}

    def add_reject(level: str, stage: str, reason: str, path: str, key: str, source_object: str = "") -> None:
        """The one way into the rejects table and the summary: paths relative to the root, counted by kind."""
        # (a non-UTF-8 file name is escaped here too, so that summary.json shows what the tables hold)
        reason = escape_undecodable(relative_reason(reason, root))
        path = escape_undecodable(relative_reason(path, root))
        writer.rejects.add({"dataset": spec.id, "source_path": path, "record_key": key, "level": level,
                            "stage": stage, "reason": reason,
                            "source_object": escape_undecodable(relative_reason(source_object, root))})
        kind = reason_key(stage, reason)
        reasons[kind] += 1
        if len(shown := examples.setdefault(kind, [])) < REASON_EXAMPLES:
            shown.append({"path": path, "reason": reason})

    try:
        seen_ids: dict[str, tuple[str, list]] = {}  # image id -> (where first seen, its annotations)
        rois_in = 0
        outcomes: Counter = Counter()  # object outcome -> objects
        lost_examples: list[str] = []
        bar = _progress(None, spec.id) if progress else None
        for res in _results(spec, root, counted(iter_discover(spec, root, discover_rejects)), cfg, salt):
            wrote = 0
            for img, rois in zip(res.images, res.rois):
                if img["image_id"] in seen_ids:
                    first, first_ann = seen_ids[img["image_id"]]
                    conflict = annotations_of(rois) != first_ann
                    why = (f"conflicting duplicate: same pixels as {first} but different annotations; the image "
                           f"found first (path order) is kept" if conflict else f"duplicate image id (same "
                           f"pixels as {first})")
                    res.rejects.append(("image", "dedup", f"{img['suffix'] or 'image'}: {why}", img["source_path"], ""))
                    res.rejects.extend(("roi", "dedup", f"{roi['label']}: on a {why.split(':')[0]} image",
                                        img["source_path"], roi["source_object"]) for roi in rois)
                    continue
                seen_ids[img["image_id"]] = (f"{img['source_path']}#{img['suffix']}", annotations_of(rois))
                writer.images.add(img)
                for roi in rois:
                    writer.rois.add(roi)
                summary.rois_out += len(rois)
                wrote += 1
            summary.images_out += wrote
            written_objects = {roi["source_object"] for img, rois in zip(res.images, res.rois)
                               if writer_has(seen_ids, img) for roi in rois}
            for level, stage, reason, path, oid in res.rejects:
                add_reject(level, stage, reason, path, res.key, oid)
                summary.images_rejected += level == "image"
                summary.rois_rejected += level == "roi"
            rois_in += res.rois_in
            account_objects(res, written_objects, outcomes, lost_examples, root)
            if res.record_reject is not None or wrote == 0:
                dups = [r[2] for r in res.rejects if r[1] == "dedup"]
                stage, reason = res.record_reject or ("dedup", f"every image duplicated an earlier one: {dups[0]}")
                add_reject("record", stage, reason, res.source_path, res.key)
                summary.records_rejected += 1
            else:
                summary.records_out += 1
            if bar is not None:  # (not `if bar`: a tqdm without a total has no truth value and raises)
                bar.update(1)
        if bar is not None:
            bar.close()
        for r in discover_rejects:
            add_reject("record", r.stage, r.reason, r.source_path, r.record_key)
        summary.records_rejected += len(discover_rejects)
        summary.records_in = found[0] + len(discover_rejects)
        if summary.records_in != summary.records_out + summary.records_rejected:
            raise AssertionError(f"{spec.id}: records do not reconcile: {summary}")
        if rois_in != summary.rois_out + summary.rois_rejected:
            raise AssertionError(f"{spec.id}: ROIs do not reconcile: in={rois_in} {summary}")
        summary.objects_in = sum(outcomes.values())
        summary.objects_out = outcomes.get(OBJECT_WRITTEN, 0)
        summary.objects_lost = outcomes.get(OBJECT_LOST, 0)
        summary.objects_rejected = summary.objects_in - summary.objects_out - summary.objects_lost
        summary.object_outcomes = dict(outcomes.most_common())
        summary.objects_lost_examples = lost_examples
        summary.reasons = dict(reasons.most_common(20))
        summary.reason_examples = {k: examples[k] for k in summary.reasons}
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.out_dir = str(out_dir / spec.id)
        writer.commit(summary.as_dict())
    except BaseException:
        writer.abort()
        raise
    return summary


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:>15}", unit="rec", leave=False, dynamic_ncols=True, disable=None)


def dataset_root(data_root: Path, spec: DatasetSpec, overrides: Mapping[str, str] | None = None) -> Path:
    """Where a dataset lives: explicit override, $MEDLVR_ROOT_<ID>, else <data_root>/<id>."""
    if overrides and spec.id in overrides:
        return Path(overrides[spec.id]).expanduser()
    env = os.environ.get(f"MEDLVR_ROOT_{spec.id.upper()}")
    if env:
        return Path(env).expanduser()
    return Path(data_root) / spec.id


def locate_datasets(data_root: Path, datasets: list[str] | None = None
                    ) -> tuple[list[DatasetSpec], list[tuple[DatasetSpec, Path]]]:
    """The selected datasets (all when `datasets` is empty) split into those whose folder exists and the absent
    ones with the folder that was looked for."""
    present, absent = [], []
    for spec in select(datasets):
        root = dataset_root(data_root, spec)
        (present.append(spec) if root.is_dir() else absent.append((spec, root)))
    return present, absent


def empty_dataset_reason(s: DatasetSummary) -> str | None:
    """One line when a dataset yielded no image at all (a run that produced nothing must not look successful):
    the counts and the most common reason, as written to the rejects table."""
    if s.images_out:
        return None
    top = next(iter(s.reasons), None)
    example = (s.reason_examples.get(top) or [{}])[0].get("reason", top) if top else "no record found"
    return f"{s.dataset}: no image came out of {s.records_in} records ({s.records_rejected} rejected); {example}"


def dataset_failure(dataset: str, err: BaseException, root: Path) -> str:
    """One line for a dataset whose run raised (an adapter bug, a disk error, memory): the exception type, where
    in this package it was raised (a relative path and line) and its message reduced to its fixed wording
    (`reason_kind`: quoted values, numbers and paths replaced), so that no identifying value reaches the log."""
    site = ""
    package = Path(__file__).resolve().parent.parent  # the folder that holds corpus/, training/, ...
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(package):
            site = f" at {path.relative_to(package).as_posix()}:{frame.lineno}"
            break
    message = (str(err).splitlines() or [""])[0]
    message = reason_kind(relative_reason(message, root)) if message else ""
    return f"{dataset}: failed: {type(err).__name__}{site}{': ' + message if message else ''}"[:300]


def run_ingest(data_root: Path, out: Path, datasets, cfg, progress: bool = True
               ) -> tuple[list[DatasetSummary], list[str]]:
    """Ingest each selected dataset; datasets are isolated. Returns the summaries of the datasets that were
    published and one line per dataset that was not: its folder vanished (`DatasetMissing`) or its run raised
    (`dataset_failure`; its previous output, if any, stays as it was). Only an interrupt stops the loop."""
    summaries, failures = [], []
    for spec in select(datasets):
        root = dataset_root(data_root, spec)
        try:
            summaries.append(ingest_dataset(spec, root, out, cfg, progress=progress))
        except DatasetMissing as e:
            failures.append(str(e))
        except Exception as e:  # MemoryError included: the next dataset starts with the memory freed
            failures.append(dataset_failure(spec.id, e, root))
    return summaries, failures
