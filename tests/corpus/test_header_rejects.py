"""Issue 25 §2: an image over the pixel limit (`max_image_pixels`) is rejected from its header, before any pixel
is decoded: PNG (IHDR), JPEG (SOF), TIFF (every page's IFD), BMP (info header), DICOM (Rows x Columns x frames,
read with stop_before_pixels). Each file below is header-legal and declares 12000 x 12000 pixels (144 M, over the
default limit of 89.5 M, under Pillow's own refusal at twice that) while costing kilobytes on disk. The declared
size is taken from the bytes with struct (pydicom for DICOM), never from the reader under test, and peak memory
is measured in a fresh subprocess (VmHWM of /proc/self/status)."""

import dataclasses
import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from medlvr.corpus.adapters.images import read_2d
from medlvr.corpus.catalog import CatalogError, load_catalog, parse_spec
from medlvr.corpus.config import ConfigError, build_config
from medlvr.corpus.ingest import IngestConfig, with_slice_options
from medlvr.corpus.limits import DEFAULT_MAX_IMAGE_PIXELS, record_limit
from medlvr.corpus.records import RecordError

SIDE = 12000
MIB = 1 << 20


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, side=SIDE):
    """A complete, valid constant grey PNG of side x side: every row filter 0 and zeros, zlib-compressed in
    pieces (144 MB of zeros is ~140 KB of stream)."""
    c = zlib.compressobj(9)
    row = bytes(side + 1)
    idat = b"".join(c.compress(row) for _ in range(side)) + c.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_jpeg(path, side=SIDE):
    """A small baseline JPEG whose SOF0 frame header is rewritten to declare side x side."""
    Image.new("RGB", (16, 16), (90, 120, 150)).save(path, "JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))


def jpeg_size(data: bytes) -> tuple[int, int]:
    sof = data.index(b"\xff\xc0")
    h, w = struct.unpack(">HH", data[sof + 5:sof + 9])
    return w, h


def _tiff_ifds(data: bytes):
    """(offset of each IFD, {tag: (entry offset, type, value)}) of a little-endian TIFF."""
    assert data[:4] == b"II*\x00"
    off = struct.unpack("<I", data[4:8])[0]
    while off:
        n = struct.unpack("<H", data[off:off + 2])[0]
        tags = {}
        for i in range(n):
            e = off + 2 + 12 * i
            tag, typ, _count = struct.unpack("<HHI", data[e:e + 8])
            value = struct.unpack("<H" if typ == 3 else "<I", data[e + 8:e + (10 if typ == 3 else 12)])[0]
            tags[tag] = (e, typ, value)
        yield off, tags
        off = struct.unpack("<I", data[off + 2 + 12 * n:off + 6 + 12 * n])[0]


def write_tiff(path, side=SIDE):
    """Two pages: a small first page and a second (a pyramid's other level, a multi-page scan) whose IFD declares
    side x side: only the first page is ever decoded, every page is looked at."""
    small = Image.new("L", (16, 16), 7)
    small.save(path, "TIFF", save_all=True, append_images=[Image.new("L", (16, 16), 9)])
    data = bytearray(path.read_bytes())
    _, tags = list(_tiff_ifds(bytes(data)))[1]
    for tag in (256, 257):  # ImageWidth, ImageLength
        e, typ, _ = tags[tag]
        data[e + 8:e + (10 if typ == 3 else 12)] = struct.pack("<H" if typ == 3 else "<I", side)
    path.write_bytes(bytes(data))


def tiff_sizes(data: bytes) -> list[tuple[int, int]]:
    return [(t[256][2], t[257][2]) for _, t in _tiff_ifds(data)]


def write_bmp(path, side=SIDE):
    """A 24-bit BMP whose BITMAPINFOHEADER declares side x side (the pixel rows are not there: never read)."""
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path, "BMP")
    data = bytearray(path.read_bytes())
    data[18:26] = struct.pack("<ii", side, side)
    path.write_bytes(bytes(data))


def bmp_size(data: bytes) -> tuple[int, int]:
    return struct.unpack("<ii", data[18:26])


def write_dicom(path, side=SIDE):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = side  # the 128x128 pixel data stays: the header alone declares 144 M pixels
    ds.save_as(path)


WRITERS = {"big.png": write_png, "big.jpg": write_jpeg, "big.tif": write_tiff, "big.bmp": write_bmp,
           "big.dcm": write_dicom}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("header_bombs")
    for name, write in WRITERS.items():
        write(d / name)
    return d


def test_the_files_declare_what_an_independent_parse_says(bombs):
    assert png_size((bombs / "big.png").read_bytes()) == (SIDE, SIDE)
    assert jpeg_size((bombs / "big.jpg").read_bytes()) == (SIDE, SIDE)
    assert tiff_sizes((bombs / "big.tif").read_bytes()) == [(16, 16), (SIDE, SIDE)]
    assert bmp_size((bombs / "big.bmp").read_bytes()) == (SIDE, SIDE)
    ds = pydicom.dcmread(bombs / "big.dcm", stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == (SIDE, SIDE)
    assert all((bombs / n).stat().st_size < 512 * 1024 for n in WRITERS)  # cheap on disk
    assert SIDE * SIDE > DEFAULT_MAX_IMAGE_PIXELS and SIDE * SIDE < 2 * Image.MAX_IMAGE_PIXELS  # Pillow only warns


_MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy, pydicom, PIL.Image  # heavy imports before the baseline
    from medlvr.corpus.adapters.images import read_2d
    from medlvr.corpus.records import RecordError

    def hwm_kib():  # VmHWM: this process's own peak (ru_maxrss keeps the parent's over fork + exec)
        return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1])

    root = Path(sys.argv[1])
    base = hwm_kib()
    reasons = {}
    for name in sys.argv[2:]:
        try:
            read_2d(root / name, root=root)
            reasons[name] = None
        except RecordError as e:
            reasons[name] = e.reason
        except Exception as e:
            reasons[name] = f"unexpected {type(e).__name__}: {e}"
    peak = hwm_kib()
    print(json.dumps({"reasons": reasons, "delta_kib": peak - base}))
""")


def test_oversized_images_are_rejected_from_the_header_at_a_fraction_of_their_decoded_size(bombs):
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(bombs), *WRITERS], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    # the smallest decoded size of them is 144 MB (8-bit grey); the whole run may grow by a tenth of it
    assert got["delta_kib"] * 1024 < 16 * MIB, f"peak grew by {got['delta_kib'] / 1024:.0f} MiB"
    for name, reason in got["reasons"].items():
        assert reason is not None, f"{name} was decoded"
        assert f"{SIDE}x{SIDE}" in reason and f"declares {SIDE * SIDE} pixels" in reason, reason
        assert f"over the image pixel limit of {DEFAULT_MAX_IMAGE_PIXELS} (max_image_pixels" in reason, reason
        assert name in reason and str(bombs) not in reason and "\n" not in reason, reason
    assert "largest of 2 pages" in got["reasons"]["big.tif"]


def test_the_pixel_limit_is_a_config_key_and_a_catalog_entry_may_raise_it(tmp_path):
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)).save(tmp_path / "a.png")
    assert read_2d(tmp_path / "a.png").array.shape == (64, 64)  # the default limit
    with record_limit(1 << 30, max_pixels=4096):  # exactly at the limit: read
        assert read_2d(tmp_path / "a.png").array.shape == (64, 64)
    with record_limit(1 << 30, max_pixels=4095), pytest.raises(
            RecordError, match=r"a.png: 64x64 L image declares 4096 pixels, over the image pixel limit of 4095"):
        read_2d(tmp_path / "a.png")
    assert IngestConfig().max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    assert build_config(IngestConfig, {"max_image_pixels": 1234}).max_image_pixels == 1234
    with pytest.raises(ConfigError, match="max_image_pixels must be a positive number"):
        build_config(IngestConfig, {"max_image_pixels": 0})
    spec = load_catalog()["busi"]
    assert with_slice_options(spec, IngestConfig(max_image_pixels=99)).max_image_pixels == 99
    raised = dataclasses.replace(spec, max_image_pixels=10 ** 9)  # what `max_image_pixels:` in busi.yaml does
    assert with_slice_options(raised, IngestConfig(max_image_pixels=99)).max_image_pixels == 10 ** 9
    raw = {k: getattr(spec, k) for k in ("id", "name", "modality", "body_region", "adapter", "labels",
                                          "patient_key", "licence", "citation", "homepage")}
    assert parse_spec(dict(raw, layout=list(spec.layout), max_image_pixels=5000)).max_image_pixels == 5000
    with pytest.raises(CatalogError, match="max_image_pixels must be a positive number of pixels"):
        parse_spec(dict(raw, layout=list(spec.layout), max_image_pixels="big"))


def test_a_dicom_volume_is_limited_per_slice_not_by_its_frame_count(tmp_path):
    """A multi-frame volume (enhanced CT: 512 x 512 x 1000 is 262 M pixels) is read slice by slice by the volume
    path: the pixel limit bounds one slice there; a 2-D multi-frame file decodes every frame and is bounded whole."""
    from medlvr.corpus.adapters.images import check_dicom_pixels

    ds = pydicom.Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, 1000
    check_dicom_pixels(ds, "ct.dcm", volume=True)
    with pytest.raises(RecordError, match=r"ct.dcm: 512x512 x 1000 frames declares 262144000 pixels"):
        check_dicom_pixels(ds, "ct.dcm", volume=False)


def test_an_oversized_image_in_a_dataset_is_one_reject_row_and_nothing_is_lost(bombs, tmp_path):
    """The user path: `ingest_dataset` on the BUSI sample with one image replaced by the 12000 x 12000 PNG. That
    record becomes a record-level reject naming its relative path, the size, the limit and the key; its mask's
    objects are accounted (issue 23); the other records are written."""
    import pyarrow.parquet as pq

    from medlvr.corpus.ingest import ingest_dataset
    from medlvr.corpus.sample_data import write_samples

    write_samples(tmp_path / "data", ["busi"], seed=0)
    root = tmp_path / "data" / "busi"
    rel = "Dataset_BUSI_with_GT/benign/benign (1).png"
    (root / rel).write_bytes((bombs / "big.png").read_bytes())
    s = ingest_dataset(load_catalog()["busi"], root, tmp_path / "out", IngestConfig(patient_salt="t", workers=1))
    rows = pq.read_table(tmp_path / "out" / "busi" / "rejects.parquet").to_pylist()
    (bad,) = [r for r in rows if r["level"] == "record" and r["source_path"] == rel]
    assert bad["stage"] == "load"
    assert bad["reason"].startswith(f"{rel}: {SIDE}x{SIDE} L image declares {SIDE * SIDE} pixels"), bad["reason"]
    assert "max_image_pixels" in bad["reason"] and str(tmp_path) not in bad["reason"]
    assert s.records_out > 0 and s.objects_lost == 0
