"""No identifier from a DICOM header or a sidecar reaches any output byte; patient keys are salted hashes.

The DICOM samples are rewritten with headers full of distinctive identifiers (names, ids, dates,
institution, referring physician, accession number), the LIDC reader XML (a sidecar) gets a radiologist id
and a request date, one file is made unreadable so that the rejects table is exercised too, and then every
file the ingest writes is scanned: raw bytes, every decoded Parquet cell, Parquet metadata, and the text
chunks of every encoded PNG.
"""

from __future__ import annotations

import io
import re

import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset, patient_hash
from medlvr.corpus.sample_data import write_samples

IDENTIFIERS = {
    "PatientName": "Quorbleflax^Hermenegilda^Xanthippe",
    "PatientID": "PIDQX77123SECRET",
    "OtherPatientIDs": "OPIDQX55501",
    "PatientBirthDate": "19311225",
    "StudyDate": "19870412",
    "SeriesDate": "19870413",
    "AcquisitionDate": "19870414",
    "InstitutionName": "Saint Quillibet Memorial Infirmary",
    "InstitutionAddress": "42 Wobblethorpe Lane Quxford",
    "ReferringPhysicianName": "Drozfeldt^Ottoline",
    "AccessionNumber": "ACCQX998877",
    "StudyID": "STQX4242",
}
SIDECAR = {"radiologist": "RADIOLOGIST-QX-4471", "date": "1987-04-12"}


def needles() -> list[bytes]:
    """Every identifier, and each name part of at least 5 characters (a person name may be split)."""
    out = set()
    for v in list(IDENTIFIERS.values()) + list(SIDECAR.values()):
        out.add(v)
        out.update(p for p in re.split(r"[\^ ]", v) if len(p) >= 5)
    return sorted(s.lower().encode() for s in out)


def inject(root) -> int:
    n = 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in (".dcm", ".dicom"):
            ds = pydicom.dcmread(p)
            for k, v in IDENTIFIERS.items():
                setattr(ds, k, v)
            ds.save_as(p)
            n += 1
        elif p.suffix == ".xml" and "LidcReadMessage" in p.read_text():
            text = re.sub(r"<servicingRadiologistID>[^<]*<", f"<servicingRadiologistID>{SIDECAR['radiologist']}<",
                          p.read_text())
            p.write_text(text.replace("<DateRequest>2000-01-01<", f"<DateRequest>{SIDECAR['date']}<"))
    return n


def break_one(root) -> None:
    """Cut the pixel data of one image but keep its identifier-rich header: it must be rejected cleanly."""
    p = sorted(q for q in root.rglob("*") if q.suffix.lower() in (".dcm", ".dicom"))[0]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 500])


def scan(blob: bytes, where: str, found: list[str]) -> None:
    low = blob.lower()
    for n in needles():
        if n in low:
            found.append(f"{n.decode()!r} in {where}")


def scan_outputs(out_dir) -> tuple[list[str], int]:
    found: list[str] = []
    files = 0
    for p in sorted(out_dir.rglob("*")):
        if not p.is_file():
            continue
        files += 1
        scan(p.read_bytes(), str(p), found)
        if p.suffix != ".parquet":
            continue
        table = pq.read_table(p)
        scan(repr(table.schema.metadata).encode(), f"{p.name} metadata", found)
        for name in table.column_names:
            for i, v in enumerate(table.column(name).to_pylist()):
                if isinstance(v, bytes) and name == "png":
                    with Image.open(io.BytesIO(v)) as im:
                        im.load()
                        chunks = dict(im.info)
                        chunks.update(getattr(im, "text", {}) or {})
                    scan(repr(chunks).encode(), f"{p.name}:{name}[{i}] PNG text", found)
                    scan(v, f"{p.name}:{name}[{i}]", found)
                else:
                    scan(repr(v).encode(), f"{p.name}:{name}[{i}]", found)
    return found, files


@pytest.mark.parametrize("dataset_id", ["lidc_idri", "vindr_cxr", "rsna_pneumonia", "siim_acr"])
def test_no_identifier_in_any_output(tmp_path, dataset_id):
    cat = load_catalog()
    assert dataset_id in cat and cat[dataset_id].adapter in ADAPTERS, f"{dataset_id}: no catalog entry or adapter"
    spec = cat[dataset_id]
    root = tmp_path / "data"
    write_samples(root, [dataset_id], seed=0)
    assert inject(root / dataset_id) >= 3
    if dataset_id != "lidc_idri":  # (LIDC's one record would then be rejected: nothing left to scan)
        break_one(root / dataset_id)
    s = ingest_dataset(spec, root / dataset_id, tmp_path / "out", IngestConfig(patient_salt="pepper-77"))
    assert s.records_in == s.records_out + s.records_rejected and s.images_out > 0
    if dataset_id != "lidc_idri":
        assert s.records_rejected >= 1  # the broken file reached the rejects table
    found, files = scan_outputs(tmp_path / "out")
    assert files >= 3
    assert not found, "\n".join(found[:20])
    # the scan itself must be able to fail: the inputs do contain the identifiers
    sample_hits: list[str] = []
    for p in (root / dataset_id).rglob("*"):
        if p.suffix.lower() in (".dcm", ".dicom"):
            scan(p.read_bytes(), str(p), sample_hits)
            break
    assert sample_hits


def test_patient_keys_are_salted_hashes(tmp_path):
    spec = load_catalog()["lidc_idri"]
    root = tmp_path / "data"
    write_samples(root, ["lidc_idri"], seed=0)
    inject(root / "lidc_idri")
    keys = {}
    for salt in ("salt-a", "salt-b"):
        ingest_dataset(spec, root / "lidc_idri", tmp_path / salt, IngestConfig(patient_salt=salt))
        keys[salt] = set(pq.read_table(tmp_path / salt / "lidc_idri/images.parquet").column("patient_key").to_pylist())
    assert keys["salt-a"] == {patient_hash("salt-a", "lidc_idri", "LIDC-IDRI-0001")}
    assert keys["salt-a"].isdisjoint(keys["salt-b"])  # the salt changes every key
    for k in keys["salt-a"] | keys["salt-b"]:
        assert re.fullmatch(r"[0-9a-f]{16,64}", k)
        assert "LIDC" not in k and IDENTIFIERS["PatientID"].lower() not in k
