"""MetaImage reader: `.mhd` header + `.raw` data, or a single `.mha` (RETOUCH OCT, CAMUS legacy release).

A small parser instead of SimpleITK: NDims, DimSize, ElementType, ElementSpacing (or ElementSize),
ElementDataFile (a file next to the header, or LOCAL), HeaderSize, BinaryDataByteOrderMSB /
ElementByteOrderMSB and CompressedData (zlib). Arrays come back in MetaImage memory order reversed, i.e.
DimSize "X Y Z" -> numpy (Z, Y, X), so a RETOUCH B-scan is `arr[i]` (depth x A-scans). Both volume adapters
(`medlvr.corpus.adapters.nifti` with `reader: metaimage`, and `medlvr.corpus.adapters.metaimage`) read through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from medlvr.corpus.limits import charge, inflate_bounded
from medlvr.corpus.orientation import LPS_TO_RAS
from medlvr.corpus.paths import confined, open_confined
from medlvr.corpus.records import RecordError


ELEMENT_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
    "MET_INT": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
_HEADER_MAX = 1 << 16  # a MetaImage header is a few hundred bytes; never read a big .mha whole to parse it


@dataclass(frozen=True)
class MhdHeader:
    dims: tuple[int, ...]  # DimSize, X first
    dtype: np.dtype  # with the file's byte order
    spacing: tuple[float, ...]  # X first
    data_rel: str  # path of the data file relative to the dataset root (the header itself for LOCAL)
    offset: int  # bytes to skip in the data file (LOCAL header length or HeaderSize); -1: data at the end
    compressed: bool
    directions_lps: tuple[tuple[float, ...], ...] | None = None  # per DimSize axis (X first), its LPS direction

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.dims)) * self.dtype.itemsize


def _bool(v: str) -> bool:
    return v.strip().lower() in ("true", "1", "yes")


def parse_header(root: Path, rel: str) -> MhdHeader:
    try:
        with open_confined(root, rel) as f:
            head = f.read(_HEADER_MAX)
    except OSError as e:
        raise RecordError(f"cannot read MetaImage header {rel}: {e}")
    fields: dict[str, str] = {}
    pos = 0
    data_file = None
    while pos < len(head):
        end = head.find(b"\n", pos)
        end = len(head) if end < 0 else end
        line = head[pos:end].decode("latin-1").strip()
        pos = end + 1
        if not line:
            continue
        if "=" not in line:
            raise RecordError(f"{rel}: not a MetaImage header line: {line[:60]!r}")
        k, v = (s.strip() for s in line.split("=", 1))
        fields[k] = v
        if k == "ElementDataFile":  # always the last header field; binary data may follow (LOCAL)
            data_file = v
            break
    if data_file is None:
        raise RecordError(f"{rel}: MetaImage header has no ElementDataFile")
    try:
        ndims = int(fields["NDims"])
        dims = tuple(int(v) for v in fields["DimSize"].split())
    except KeyError as e:
        raise RecordError(f"{rel}: MetaImage header lacks {e.args[0]}")
    except ValueError:
        raise RecordError(f"{rel}: NDims/DimSize are not integers: {fields.get('NDims')!r} {fields.get('DimSize')!r}")
    if ndims < 1 or len(dims) != ndims or min(dims) < 1:
        raise RecordError(f"{rel}: DimSize {dims} does not give NDims={ndims} positive sizes")
    etype = fields.get("ElementType", "")
    if etype not in ELEMENT_TYPES:
        raise RecordError(f"{rel}: unsupported ElementType {etype!r}")
    if int(fields.get("ElementNumberOfChannels", "1")) != 1:
        raise RecordError(f"{rel}: multi-channel MetaImage (ElementNumberOfChannels) is not supported")
    msb = _bool(fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")))
    dtype = np.dtype(ELEMENT_TYPES[etype]).newbyteorder(">" if msb else "<")
    sp_text = fields.get("ElementSpacing") or fields.get("ElementSize") or " ".join(["1"] * ndims)
    try:
        spacing = tuple(float(v) for v in sp_text.split())
    except ValueError:
        raise RecordError(f"{rel}: ElementSpacing {sp_text!r} is not numeric")
    if len(spacing) != ndims or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise RecordError(f"{rel}: ElementSpacing {spacing} must be {ndims} positive numbers")
    compressed = _bool(fields.get("CompressedData", "False"))
    if data_file.upper() == "LOCAL":
        data_rel, offset = rel, pos
    else:
        if data_file.upper() == "LIST" or "%" in data_file:
            raise RecordError(f"{rel}: ElementDataFile {data_file!r} (file lists/patterns) is not supported")
        df = data_file.replace("\\", "/")
        if df.startswith("/") or (len(df) > 1 and df[1] == ":"):
            raise RecordError(f"{rel}: ElementDataFile is an absolute path: {data_file!r}")
        if ".." in PurePosixPath(df).parts:
            raise RecordError(f"{rel}: ElementDataFile escapes the header's folder: {data_file!r}")
        data_rel = (PurePosixPath(rel).parent / df).as_posix()
        offset = int(fields.get("HeaderSize", "0"))
    return MhdHeader(dims, dtype, spacing, data_rel, offset, compressed, _directions(fields, ndims, rel))


# AnatomicalOrientation letters name the side each axis runs FROM (ITK's codes: "RAI" is the identity matrix)
_FROM_SIDE_LPS = {"R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0), "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
                  "I": (0.0, 0.0, 1.0), "S": (0.0, 0.0, -1.0)}


def _directions(fields: dict[str, str], ndims: int, rel: str) -> tuple[tuple[float, ...], ...] | None:
    """Each axis' direction in LPS patient coordinates, as ITK reads a MetaImage: TransformMatrix (aliases
    Rotation, Orientation), row i the direction of axis i; without one, AnatomicalOrientation; else None."""
    if ndims != 3:
        return None
    text = next((fields[k] for k in ("TransformMatrix", "Rotation", "Orientation") if k in fields), None)
    if text is not None:
        try:
            m = np.array([float(v) for v in text.split()], dtype=float)
        except ValueError:
            raise RecordError(f"{rel}: TransformMatrix {text!r} is not numeric")
        if m.size != 9 or not np.isfinite(m).all() or abs(np.linalg.det(m.reshape(3, 3))) < 1e-6:
            raise RecordError(f"{rel}: TransformMatrix {text!r} is not an invertible 3x3 matrix")
        return tuple(tuple(r) for r in m.reshape(3, 3).tolist())
    code = fields.get("AnatomicalOrientation", "").strip().upper()
    if not code or code == "?" * len(code):
        return None
    if len(code) != 3 or set(code) - set(_FROM_SIDE_LPS) or len({"RLAPIS".index(c) // 2 for c in code}) != 3:
        raise RecordError(f"{rel}: AnatomicalOrientation {code!r} is not three letters of R/L, A/P, I/S")
    return tuple(_FROM_SIDE_LPS[c] for c in code)


def directions_ras(root: Path, rel: str) -> np.ndarray | None:
    """(3, 3) RAS directions of read_mhd's array axes (DimSize order reversed: Z, Y, X) as columns, for
    corpus.orientation.display_axes; None for a header without orientation or not 3-D."""
    h = check_mhd(root, rel)
    if h.directions_lps is None:
        return None
    return LPS_TO_RAS @ np.array(h.directions_lps[::-1], dtype=float).T


def _data_size_ok(h: MhdHeader, rel: str, available: int) -> None:
    """Uncompressed data must be exactly DimSize x element size (HeaderSize -1: at least, at the end)."""
    if h.compressed:
        return
    ok = available >= h.nbytes if h.offset < 0 else available == h.nbytes
    if not ok:
        raise RecordError(f"{rel}: data file {h.data_rel} holds {available} bytes but DimSize {list(h.dims)} of "
                          f"{h.dtype.name} needs {h.nbytes}")


def check_mhd(root: Path, rel: str) -> MhdHeader:
    """Header and data-file checks without reading the data (for discovery)."""
    h = parse_header(root, rel)
    try:
        data = confined(root, h.data_rel)
    except RecordError as e:
        raise RecordError(f"{rel}: ElementDataFile missing: {h.data_rel}" if "missing" in e.reason
                          else f"{rel}: ElementDataFile {e.reason}") from None
    size = data.stat().st_size
    _data_size_ok(h, rel, size - max(h.offset, 0))
    return h


def read_mhd(root: Path, rel: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """(array with axes reversed from DimSize, spacing in the same axis order). DimSize x element size is
    charged against the record limit before any data is read; compressed data never inflates past it;
    uncompressed data in the machine's byte order is memory-mapped (copy-on-write), not read whole."""
    h = check_mhd(root, rel)
    charge(h.nbytes, f"{rel}: DimSize {'x'.join(map(str, h.dims))} of {h.dtype.name}")
    shape = tuple(h.dims[::-1])
    native = h.dtype.newbyteorder("=")
    try:
        with open_confined(root, h.data_rel) as f:
            if h.compressed:
                f.seek(max(h.offset, 0))
                raw = inflate_bounded(f.read(), h.nbytes, f"{rel}: data {h.data_rel}")
            elif h.nbytes and h.dtype == native:
                # exactly nbytes (checked by check_mhd), at the end of the file for HeaderSize -1: mapped, not
                # read (copy-on-write, so the file is never written); the volume path touches only what it uses
                size = f.seek(0, 2)
                arr = np.memmap(f, dtype=native, mode="c", shape=shape,
                                offset=size - h.nbytes if h.offset < 0 else h.offset)
                return arr, tuple(h.spacing[::-1])
            else:  # a byte order other than the machine's: read and swapped below
                f.seek(-h.nbytes if h.offset < 0 else h.offset, 2 if h.offset < 0 else 0)
                raw = f.read(h.nbytes)
    except OSError as e:
        raise RecordError(f"cannot read {h.data_rel}: {e}")
    arr = np.frombuffer(raw, dtype=h.dtype, count=int(np.prod(h.dims))).reshape(shape)
    return arr.astype(native, copy=True), tuple(h.spacing[::-1])
