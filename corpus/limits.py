"""The record limit: how many bytes one record may make a reader decode (`max_record_bytes`).

A hostile or broken file must cost no more memory than the largest legitimate record of its dataset. Readers
therefore check DECLARED sizes (image header, DICOM Rows x Columns x frames x samples x bits, NIfTI/MetaImage/HDF5
shape x element size) with `charge` before they read or decode anything, bound every decompression to the
declared size (`inflate_bounded`), and `corpus.paths.confined` refuses any file larger than the limit before it is
opened (annotation tables and JSON included). The limit is `IngestConfig.max_record_bytes` (a run-wide default) or
the catalog entry's `max_record_bytes` for a dataset whose records are legitimately larger; the runner sets it for
each dataset's discovery and each record's load with `record_limit`. Charges add up over one record (a BraTS record
decodes four sequences and a label map).

The pixel limit (`max_image_pixels`) bounds one 2-D image: width x height of a PNG/JPEG/BMP/TIFF page (every page
of a TIFF is looked at), Rows x Columns x NumberOfFrames of a 2-D DICOM, read from the header before any pixel is
decoded (`check_pixels`). Its default is Pillow's own decompression-bomb threshold, which Pillow itself only warns
about below twice that: a constant 12000 x 12000 PNG (a few KB on disk) would otherwise be decoded whole.
"""

from __future__ import annotations

import contextlib
import zlib
from contextvars import ContextVar
from typing import Iterator

from medlvr.corpus.records import RecordError

DEFAULT_MAX_RECORD_BYTES = 2 << 30  # 2 GiB: a 512x512x1000 float32 CT is 1 GiB
# Pillow's Image.MAX_IMAGE_PIXELS (1 GiB of 32-bit RGB pixels); the largest real 2-D images of the catalog
# (3000 x 3000 X-rays, ~4000 x 5000 mammograms, 1000 x 1000 slide tiles) are far below it
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


class _Budget:
    def __init__(self, limit: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.limit, self.used, self.max_pixels = int(limit), 0, int(max_pixels)


_budget: ContextVar[_Budget | None] = ContextVar("medlvr_record_budget", default=None)


@contextlib.contextmanager
def record_limit(limit: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[None]:
    """Charges inside the block count against a fresh budget of `limit` bytes; one 2-D image may have at most
    `max_pixels` pixels."""
    if limit < 1:
        raise ValueError(f"max_record_bytes must be positive, got {limit}")
    if max_pixels < 1:
        raise ValueError(f"max_image_pixels must be positive, got {max_pixels}")
    token = _budget.set(_Budget(limit, max_pixels))
    try:
        yield
    finally:
        _budget.reset(token)


def current_limit() -> int:
    b = _budget.get()
    return b.limit if b is not None else DEFAULT_MAX_RECORD_BYTES


def current_max_pixels() -> int:
    b = _budget.get()
    return b.max_pixels if b is not None else DEFAULT_MAX_IMAGE_PIXELS


def check_pixels(pixels: int, what: str, stage: str = "load") -> None:
    """One 2-D image whose header declares `pixels` pixels (all its frames) over the pixel limit -> RecordError,
    before anything is decoded; `what` names the file (relative) and the declared size ("a.png: 12000x12000")."""
    limit = current_max_pixels()
    if pixels > limit:
        raise RecordError(f"{what} declares {pixels} pixels, over the image pixel limit of {limit} "
                          f"(max_image_pixels, in the ingest config or the dataset's catalog entry); "
                          f"rejected from its header, nothing decoded", stage=stage)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def charge(nbytes: int, what: str, stage: str = "load") -> None:
    """Count `nbytes` that a reader is about to decode for the current record; over the limit -> RecordError
    (`what` names the file and the declared size, e.g. "a.dcm: 512x512x40000 frames of 16 bits")."""
    b = _budget.get()
    limit = b.limit if b is not None else DEFAULT_MAX_RECORD_BYTES
    used = b.used if b is not None else 0
    if nbytes < 0 or used + nbytes > limit:
        raise RecordError(f"{what} declares {nbytes} bytes ({_mib(nbytes)}); with {used} bytes already read "
                          f"for this record that is over the record limit of {limit} bytes ({_mib(limit)}, "
                          f"max_record_bytes)" if used else
                          f"{what} declares {nbytes} bytes ({_mib(nbytes)}), over the record limit of {limit} "
                          f"bytes ({_mib(limit)}, max_record_bytes)", stage=stage)
    if b is not None:
        b.used += nbytes


def check_file_size(size: int, rel: str, stage: str = "load") -> None:
    """A file larger than the record limit is refused before it is opened (no reader reads it whole)."""
    limit = current_limit()
    if size > limit:
        raise RecordError(f"{rel}: file is {size} bytes ({_mib(size)}), over the record limit of {limit} bytes "
                          f"({_mib(limit)}, max_record_bytes)", stage=stage)


def inflate_bounded(data: bytes, expected: int, what: str, wbits: int = 47) -> bytes:
    """zlib/gzip data that must inflate to exactly `expected` bytes, never inflating past `expected` + 1: a
    stream that would give more is refused having cost at most that much memory (47: zlib or gzip header)."""
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(data, expected + 1)
    except zlib.error as e:
        raise RecordError(f"{what}: corrupt compressed data: {e}")
    if len(out) > expected or d.unconsumed_tail:
        raise RecordError(f"{what}: compressed data inflates past the declared {expected} bytes")
    if len(out) < expected:
        raise RecordError(f"{what}: decompressed data is {len(out)} bytes but the header declares {expected}")
    return out
