"""Perceptual hashing, the radius index, duplicate groups, leakage-free splits and benchmark decontamination."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import gaussian_filter

from medlvr.corpus.decontam import DecontamReport, find_contaminated, scan_benchmark_images
from medlvr.corpus.dedup import (HashIndex, decode_image, dhash, duplicate_groups, hamming, iter_image_hashes,
                          overlap_pairs, phash)
from medlvr.corpus.splits import assign_splits, iter_split_rows, normalise_split
from medlvr.corpus.tables import IMAGES_SCHEMA


# ------------------------------------------------------------------------------------------------ helpers

def textured(seed: int, size: int = 192, rgb: bool = False) -> np.ndarray:
    """A smooth random texture with some finer detail, uint8 (H, W) or (H, W, 3)."""
    r = np.random.default_rng(seed)
    shape = (size, size, 3) if rgb else (size, size)
    coarse, fine = ((5, 5, 0), (1.5, 1.5, 0)) if rgb else (5, 1.5)
    a = gaussian_filter(r.normal(size=shape), coarse) + 0.3 * gaussian_filter(r.normal(size=shape), fine)
    a = (a - a.min()) / (a.max() - a.min()) * 255
    return a.astype(np.uint8)


def encode(img: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def degrade(img: np.ndarray, scale: float = 0.7, quality: int = 90) -> np.ndarray:
    """Resize, then re-encode as JPEG: what a benchmark copy of a corpus image typically went through."""
    h, w = img.shape[:2]
    small = np.asarray(Image.fromarray(img).resize((int(w * scale), int(h * scale)), Image.Resampling.BILINEAR))
    return decode_image(encode(small, "JPEG", quality=quality))


def image_id(img: np.ndarray) -> str:
    h = hashlib.sha1(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def write_images_table(path, dataset: str, imgs: list[np.ndarray], patients=None, splits=None) -> list[str]:
    """A minimal but schema-valid images.parquet for `dataset`; returns the image_ids."""
    rows = []
    for k, img in enumerate(imgs):
        h, w = img.shape[:2]
        rows.append({
            "image_id": image_id(img), "dataset": dataset, "modality": "X", "body_region": None,
            "source_path": f"{k}.png", "suffix": "", "record_key": str(k),
            "patient_key": (patients or [f"p{k}"] * len(imgs))[k],
            "official_split": (splits or [None] * len(imgs))[k], "width": w, "height": h,
            "channels": 1 if img.ndim == 2 else img.shape[2], "orig_width": w, "orig_height": h, "scale_x": 1.0,
            "scale_y": 1.0, "pad": [0, 0, 0, 0], "spacing_mm": None, "slice_axis": None, "slice_index": None,
            "intensity": "uint8", "window_low": None, "window_high": None, "window_name": None,
            "attributes": None, "png": encode(img),
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), path, row_group_size=3)
    return [r["image_id"] for r in rows]


def flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


# ------------------------------------------------------------------------------------------------ hashing

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rgb", [False, True])
def test_phash_stable_under_resize_and_jpeg(seed, rgb):
    img = textured(seed, rgb=rgb)
    copy = degrade(img, scale=0.6, quality=90)
    assert hamming(phash(img), phash(copy)) <= 4
    assert hamming(dhash(img), dhash(copy)) <= 6
    assert hamming(phash(img), phash(textured(seed + 100, rgb=rgb))) > 12


def test_phash_properties():
    img = textured(7)
    h = phash(img)
    assert 0 <= h < 2 ** 64 and h >> 63 == 0  # the DC slot is always 0
    assert phash(np.full((40, 50), 17, np.uint8)) == 0  # flat image
    # brightness offset / scale and bit depth do not change the hash
    assert phash(img.astype(np.uint16) * 200 + 1000) == h
    # grey and the same grey replicated to RGB agree
    assert phash(np.stack([img] * 3, axis=-1)) == h
    # distinct images differ a lot on average
    hs = [phash(textured(s)) for s in range(20)]
    assert min(hamming(a, b) for i, a in enumerate(hs) for b in hs[i + 1:]) > 8


# --------------------------------------------------------------------------------------------- the index

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), radius=st.integers(0, 10), n=st.integers(1, 120))
def test_hash_index_equals_brute_force(seed, radius, n):
    rng = random.Random(seed)
    hashes = []
    for _ in range(n):  # random hashes plus planted neighbours at distances around the radius
        if hashes and rng.random() < 0.6:
            hashes.append(flip(rng.choice(hashes), rng.sample(range(64), rng.randint(0, radius + 3))))
        else:
            hashes.append(rng.getrandbits(64))
    index = HashIndex(radius)
    index.add_many(hashes)
    queries = hashes[:20] + [rng.getrandbits(64) for _ in range(5)]
    for q in queries:
        for r in {radius, max(radius - 1, 0)}:
            assert index.query(q, r) == index.brute_force(q, r)
    qi, pos, d = index.query_many(queries)
    assert [(int(a), int(b), int(c)) for a, b, c in zip(qi, pos, d)] == \
        [(k, p, dist) for k, q in enumerate(queries) for p, dist in index.brute_force(q)]
    # self-join: every pair once, i < j, in both a single chunk and many small chunks
    truth = [(i, j, hamming(a, b)) for i, a in enumerate(hashes) for j, b in enumerate(hashes)
             if i < j and hamming(a, b) <= radius]
    for chunk in (1 << 20, 3):
        got = [tuple(map(int, t)) for t in zip(*index.pairs(chunk=chunk))]
        assert got == truth


def test_hash_index_refuses_larger_radius_and_handles_empty():
    index = HashIndex(2)
    assert index.query(123) == []
    index.add(0)
    assert index.query(0b111, 3 - 1) == [] and index.query(0b11) == [(0, 2)]
    with pytest.raises(ValueError):
        index.query(0, 3)
    with pytest.raises(ValueError):
        index.add(2 ** 64)


# ----------------------------------------------------------------------------------------- duplicate groups

def test_duplicate_groups_exact_near_and_overlap_radius():
    rng = random.Random(1)
    base = [rng.getrandbits(64) for _ in range(8)]
    rows = [
        ("a1", "busi", base[0]), ("a1", "tn3k", base[0]),          # exact: same image_id in two datasets
        ("a2", "hc18", flip(base[0], [1, 5, 9])),                   # near (3 bits) to a1, another dataset
        ("b1", "isic2018", base[1]), ("b2", "ham10000", flip(base[1], list(range(6)))),  # 6 bits, overlap pair
        ("c1", "isic2018", base[2]), ("c2", "busi", flip(base[2], list(range(6)))),      # 6 bits, no overlap
        ("d1", "isic2018", base[3]), ("d2", "isic2018", flip(base[3], list(range(6)))),  # 6 bits, same dataset
        ("e1", "nih_bbox", base[4]), ("e2", "siim_acr", flip(base[4], list(range(8)))),  # 8 bits, overlap pair
        ("f1", "refuge", base[5]), ("f2", "adam", flip(base[5], list(range(9)))),        # 9 bits: too far
        ("g1", "kits23", base[6]), ("g2", "kits19", flip(base[6], list(range(7)))),      # KiTS19 copy
        ("z9", "lits", base[7]),
    ]
    g = duplicate_groups(rows)
    assert set(g) == {r[0] for r in rows}
    assert g["a1"] == g["a2"] == "a1"
    assert g["b1"] == g["b2"] == "b1"
    assert g["c1"] == "c1" and g["c2"] == "c2"
    assert g["d1"] == "d1" and g["d2"] == "d2"
    assert g["e1"] == g["e2"] == "e1"
    assert g["f1"] == "f1" and g["f2"] == "f2"
    assert g["g1"] == g["g2"] == "g1"
    assert g["z9"] == "z9"
    # deterministic and independent of row order
    assert duplicate_groups(list(reversed(rows))) == g
    # the looser radius can be switched off
    g0 = duplicate_groups(rows, overlap_radius=4)
    assert g0["b2"] == "b2" and g0["a2"] == "a1"
    assert frozenset(("rsna_pneumonia", "nih_bbox")) in overlap_pairs()
    assert frozenset(("isic2018", "busi")) not in overlap_pairs()


def test_duplicate_groups_transitive_chain_and_smallest_id():
    h = 0x0F0F_0F0F_0F0F_0F0F
    rows = [("m", "busi", h), ("k", "tn3k", flip(h, [0, 1, 2])), ("x", "hc18", flip(h, [0, 1, 2, 3, 4, 5]))]
    g = duplicate_groups(rows)  # x is 6 from m but 3 from k: one group through k
    assert g == {"m": "k", "k": "k", "x": "k"}


def test_iter_image_hashes_streams_parquet_and_groups_real_copies(tmp_path):
    a = [textured(s) for s in range(5)]
    b = [degrade(a[0]), degrade(a[3], scale=0.8), textured(50)]
    b = [np.asarray(Image.fromarray(x).resize((192, 192))) for x in b]
    ids_a = write_images_table(tmp_path / "isic2018" / "images.parquet", "isic2018", a)
    ids_b = write_images_table(tmp_path / "ham10000" / "images.parquet", "ham10000", b)
    (tmp_path / ".ham10000.tmp-1234").mkdir()  # an unpublished temporary folder is ignored
    rows = list(iter_image_hashes(tmp_path, batch_size=2))
    assert [r[:2] for r in rows] == [(i, "ham10000") for i in ids_b] + [(i, "isic2018") for i in ids_a]
    assert rows[0][2] == phash(b[0])
    assert [r[0] for r in iter_image_hashes(tmp_path, datasets=["isic2018"])] == ids_a
    with pytest.raises(FileNotFoundError):
        list(iter_image_hashes(tmp_path, datasets=["nope"]))
    g = duplicate_groups(rows)
    assert g[ids_b[0]] == g[ids_a[0]] and g[ids_b[1]] == g[ids_a[3]]
    assert len(set(g.values())) == 6


# ----------------------------------------------------------------------------------------------- splits

def test_normalise_split_values():
    assert [normalise_split(v, "x") for v in ("training", "Training", "tr", "TRAIN", "Validation", "dev",
                                                "Testing", "test", None, "", "nan")] == \
        ["train"] * 4 + ["validation"] * 2 + ["test"] * 2 + [None] * 3
    assert [normalise_split(v, "deeplesion") for v in ("1", "2", "3", "train")] == ["train", "validation", "test", "train"]
    with pytest.raises(ValueError):
        normalise_split("1", "busi")  # numeric codes only mean something per dataset
    with pytest.raises(ValueError):
        normalise_split("holdout", "busi")


def synthetic_rows(n_patients: int, seed: int) -> list[dict]:
    """Patients with 1-5 images in three datasets, cross-dataset duplicate groups, official splits for one."""
    rng = random.Random(seed)
    rows = []
    for p in range(n_patients):
        ds = ("busi", "deeplesion", "hc18")[p % 3]
        official = {"deeplesion": rng.choice(["1", "1", "1", "2", "3"])}.get(ds)
        for k in range(rng.randint(1, 5)):
            rows.append({"image_id": f"{p:06d}-{k}", "dataset": ds, "patient_key": f"pk{p}",
                         "official_split": official, "dup_group": None})
    # duplicate groups that join images of different patients and datasets (a few % of the images)
    for _ in range(len(rows) // 40):
        x, y = rng.sample(range(len(rows)), 2)
        g = min(rows[x]["image_id"], rows[y]["image_id"])
        for i in (x, y):
            rows[i]["dup_group"] = rows[i]["dup_group"] or g
    return rows


def check_disjoint(rows, assignment):
    by_patient, by_group = defaultdict(set), defaultdict(set)
    for r in rows:
        by_patient[(r["dataset"], r["patient_key"])].add(assignment[r["image_id"]])
        if r["dup_group"]:
            by_group[r["dup_group"]].add(assignment[r["image_id"]])
    assert all(len(s) == 1 for s in by_patient.values())
    assert all(len(s) == 1 for s in by_group.values())


def test_splits_large_synthetic_invariants():
    rows = synthetic_rows(9000, seed=3)
    assignment, report = assign_splits(rows, fractions=(0.8, 0.1, 0.1), seed=0)
    assert set(assignment) == {r["image_id"] for r in rows} and report.images == len(assignment)
    check_disjoint(rows, assignment)
    # deterministic, whatever the row order
    shuffled = rows[:]
    random.Random(9).shuffle(shuffled)
    assert assign_splits(shuffled, seed=0)[0] == assignment
    assert assign_splits(rows, seed=1)[0] != assignment
    # fractions approximately met where no official split exists
    for ds in ("busi", "hc18"):
        per = report.per_dataset[ds]
        n = sum(per.values())
        assert abs(per["train"] / n - 0.8) < 0.03 and abs(per["validation"] / n - 0.1) < 0.02
    # official splits respected unless a duplicate group ties the image to a stricter split
    code = {"1": "train", "2": "validation", "3": "test"}
    official = [r for r in rows if r["official_split"]]
    kept = sum(assignment[r["image_id"]] == code[r["official_split"]] for r in official)
    assert report.official_images == len(official) and kept + report.moved == len(official)
    assert report.moved < 0.05 * len(official)
    for r in official:  # a move is always towards a stricter split
        order = ["train", "validation", "test"]
        assert order.index(assignment[r["image_id"]]) >= order.index(code[r["official_split"]])
    assert report.largest_component < 50


def test_splits_official_conflict_strictest_wins():
    rows = [
        {"image_id": "i1", "dataset": "nih_bbox", "patient_key": "p1", "official_split": "train", "dup_group": "g"},
        {"image_id": "i2", "dataset": "nih_bbox", "patient_key": "p1", "official_split": "train", "dup_group": None},
        {"image_id": "i3", "dataset": "rsna_pneumonia", "patient_key": "q", "official_split": None, "dup_group": "g"},
        {"image_id": "i4", "dataset": "chestx_det", "patient_key": "r", "official_split": "test", "dup_group": "g"},
        {"image_id": "j1", "dataset": "livecell", "patient_key": "s", "official_split": "validation",
         "dup_group": None},
        {"image_id": "j2", "dataset": "livecell", "patient_key": "s", "official_split": None, "dup_group": None},
        # the same patient_key in another dataset is another patient
        {"image_id": "k1", "dataset": "busi", "patient_key": "p1", "official_split": None, "dup_group": None},
    ]
    assignment, report = assign_splits(rows)
    assert {assignment[i] for i in ("i1", "i2", "i3", "i4")} == {"test"}
    assert report.moved == 2 and report.moved_by_dataset == {"nih_bbox": 2}
    assert report.conflict_components == 1 and report.official_components == 2
    assert assignment["j1"] == assignment["j2"] == "validation"
    assert report.components == 3 and report.largest_component == 4
    assert report.to_dict()["fractions"]["test"] == pytest.approx(4 / 7)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 8), st.sampled_from([None, "train", "val", "test"]),
                          st.one_of(st.none(), st.integers(0, 5))), min_size=1, max_size=40),
       st.integers(0, 3))
def test_splits_property(specs, seed):
    rows = [{"image_id": f"im{k:03d}", "dataset": f"d{d}", "patient_key": f"p{p}", "official_split": s,
             "dup_group": None if g is None else f"g{g}"} for k, (d, p, s, g) in enumerate(specs)]
    assignment, report = assign_splits(rows, seed=seed)
    check_disjoint(rows, assignment)
    assert sum(report.per_split.values()) == len(rows)
    # an image whose component has only consistent official splits keeps its own
    if report.conflict_components == 0:
        assert report.moved == 0
        # (the official value `val` is the split `validation`: the Hugging Face name)
        assert all(assignment[r["image_id"]] == {"val": "validation"}.get(r["official_split"], r["official_split"])
                   for r in rows if r["official_split"])


def test_iter_split_rows_reads_tables(tmp_path):
    imgs = [textured(s, size=32) for s in range(4)]
    ids = write_images_table(tmp_path / "deeplesion" / "images.parquet", "deeplesion", imgs,
                             patients=["a", "a", "b", "c"], splits=["1", "1", "3", None])
    rows = list(iter_split_rows(tmp_path, {ids[3]: ids[2]}))
    assert [r["dup_group"] for r in rows] == [ids[0], ids[1], ids[2], ids[2]]
    assignment, report = assign_splits(rows)
    assert [assignment[i] for i in ids] == ["train", "train", "test", "test"]


# ---------------------------------------------------------------------------------------- decontamination

def test_decontamination_finds_planted_images_in_all_forms(tmp_path):
    corpus = [textured(s, rgb=(s % 2 == 1)) for s in range(8)]
    corpus_rows = [(image_id(x), phash(x)) for x in corpus]

    bench_a = tmp_path / "slake"  # image folder, with a planted re-encoded copy saved as PNG
    (bench_a / "imgs" / "xmlab1").mkdir(parents=True)
    (bench_a / "imgs" / "xmlab1" / "source.png").write_bytes(encode(degrade(corpus[0], 0.5)))
    (bench_a / "imgs" / "other.jpg").write_bytes(encode(textured(200), "JPEG", quality=85))
    (bench_a / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    (bench_a / "train.json").write_text("[]")

    bench_b = tmp_path / "vqa_rad"  # parquet with an HF Image struct column and a binary column
    structs = [{"bytes": encode(textured(300 + k), "JPEG", quality=90), "path": f"{k}.jpg"} for k in range(5)]
    structs[3] = {"bytes": encode(degrade(corpus[1], 0.8), "JPEG", quality=90), "path": "synpic1.jpg"}
    structs[4] = {"bytes": None, "path": "only/a/path.jpg"}
    binaries = [encode(textured(400 + k)) for k in range(4)] + [b"\x89PNG\r\n\x1a\n garbage"]
    binaries[2] = encode(degrade(corpus[2], 0.9))
    table = pa.table({
        "image": pa.array(structs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "image_2": pa.array(binaries, type=pa.binary()),
        "blob": pa.array([b"not an image"] * 5, type=pa.binary()),
        "question": ["q"] * 5,
    })
    (bench_b / "data").mkdir(parents=True)
    pq.write_table(table, bench_b / "data" / "test-00000-of-00001.parquet", row_group_size=2)
    (bench_b / "data" / "corrupt.parquet").write_bytes(b"PAR1 nonsense")

    bench_c = tmp_path / "medxpertqa"  # zip archive with image members (and one corrupt member)
    bench_c.mkdir()
    with zipfile.ZipFile(bench_c / "images.zip", "w") as zf:
        zf.writestr("images/MM-1-a.jpeg", encode(degrade(corpus[3], 0.75), "JPEG", quality=90))
        zf.writestr("images/MM-2-a.png", encode(textured(500)))
        zf.writestr("images/MM-3-a.jpg", b"\xff\xd8\xff truncated")
        zf.writestr("MM/test.jsonl", "{}")
    (bench_c / "broken.zip").write_bytes(b"PK not a zip")

    clean = tmp_path / "pmc_vqa"  # unrelated images only
    clean.mkdir()
    for k in range(6):
        (clean / f"fig{k}.png").write_bytes(encode(textured(600 + k, rgb=True)))

    roots = {"slake": bench_a, "vqa_rad": bench_b, "medxpertqa": bench_c, "pmc_vqa": clean,
             "mmmu": tmp_path / "absent"}
    report = DecontamReport()
    bench = list(scan_benchmark_images(roots, report))
    assert report.scanned == {"medxpertqa": 2, "mmmu": 0, "pmc_vqa": 6, "slake": 2, "vqa_rad": 8}
    assert report.unreadable == {"medxpertqa": 2, "mmmu": 0, "pmc_vqa": 0, "slake": 1, "vqa_rad": 2}
    assert report.missing_roots == [f"mmmu: {tmp_path / 'absent'}"]
    assert any(r.startswith("images.zip!images/MM-3-a.jpg") for r in report.unreadable_refs["medxpertqa"])
    assert bench == list(scan_benchmark_images(roots))  # deterministic order

    matches = find_contaminated(iter(corpus_rows + corpus_rows[:1]), bench, radius=4, report=report, batch_size=3)
    got = {(m.image_id, m.benchmark, m.ref) for m in matches}
    assert got == {
        (corpus_rows[0][0], "slake", "imgs/xmlab1/source.png"),
        (corpus_rows[1][0], "vqa_rad", "data/test-00000-of-00001.parquet#image[3]"),
        (corpus_rows[2][0], "vqa_rad", "data/test-00000-of-00001.parquet#image_2[2]"),
        (corpus_rows[3][0], "medxpertqa", "images.zip!images/MM-1-a.jpeg"),
    }
    assert len(matches) == 4 and all(m.distance <= 4 for m in matches)
    assert report.matched == {"medxpertqa": 1, "mmmu": 0, "pmc_vqa": 0, "slake": 1, "vqa_rad": 2}
    assert report.contaminated_images == 4 and report.corpus_images == 9


def test_decontamination_clean_benchmark_and_single_file_root(tmp_path):
    corpus_rows = [(f"c{s}", phash(textured(s))) for s in range(10)]
    (tmp_path / "mmmu").mkdir()
    for k in range(5):
        (tmp_path / "mmmu" / f"{k}.bmp").write_bytes(encode(textured(700 + k), "BMP"))
        (tmp_path / "mmmu" / f"{k}.tif").write_bytes(encode(textured(800 + k), "TIFF"))
    single = tmp_path / "one.png"
    single.write_bytes(encode(textured(900)))
    report = DecontamReport()
    bench = list(scan_benchmark_images({"mmmu": tmp_path / "mmmu", "single": single}, report))
    assert report.scanned == {"mmmu": 10, "single": 1} and report.unreadable == {"mmmu": 0, "single": 0}
    assert bench[-1][:2] == ("single", "one.png")
    assert find_contaminated(corpus_rows, bench, report=report) == []
    assert report.matched == {"mmmu": 0, "single": 0} and report.contaminated_images == 0
