"""No identifier from a DICOM header or a sidecar reaches any output byte; patient keys are salted hashes.

The DICOM samples are rewritten with headers full of distinctive identifiers (names, ids, dates,
institution, referring physician, accession number), the LIDC reader XML (a sidecar) gets a radiologist id
and a request date, one file is made unreadable so that the rejects table is exercised too, and then every
file the ingest writes is scanned: raw bytes, every decoded Parquet cell, Parquet metadata, and the text
chunks of every encoded PNG.

The last test holds every path to the issue-14 standard: a marker in every text-capable DICOM element (private tags
and nested sequences included) and in DeepLesion's Patient_index (with rows that take a reject path), through
`medlvr ingest`, `medlvr build-corpus` and the main job's Dagster corpus runs; every byte of every output file is
scanned, the Dagster instance's SQLite files and the captured console output included.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset, patient_hash
from medlvr.corpus.sample_data import write_samples

REPO = Path(__file__).resolve().parents[2]

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


# ---- the issue-14 standard: a marker in every header field that can hold text, private tags and sequences included,
# ---- the same markers in sidecar rows that take reject paths, through the CLI and the Dagster corpus jobs.

MARK = "QXMARK"  # every planted value contains it; no output may


def stuff_dicom(path) -> None:
    """A marker in every text-capable element (names, ids, dates, times, descriptions, addresses), in private
    tags and in a sequence whose items carry identifying elements of their own."""
    ds = pydicom.dcmread(path)
    text_vrs = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "DA", "DT", "TM", "AE"}
    for elem in list(ds.iterall()):
        if elem.VR in text_vrs and elem.tag.group != 0x0002:
            elem.value = f"{MARK}{elem.keyword or 'x'}"[:16] if elem.VR in ("SH", "AE", "DA", "TM") else \
                f"{MARK}-{elem.keyword or 'private'}-value"
    for keyword in ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "InstitutionName",
                    "InstitutionAddress", "ReferringPhysicianName", "AccessionNumber", "StudyID",
                    "SeriesDescription", "StudyDescription", "OperatorsName", "PatientComments"):
        setattr(ds, keyword, f"{MARK}{keyword}"[:16] if keyword in ("AccessionNumber", "StudyID") else
                f"{MARK}-{keyword}")
    block = ds.private_block(0x0099, "QX PRIVATE CREATOR", create=True)
    block.add_new(0x01, "LO", f"{MARK}-private-LO")
    block.add_new(0x02, "UT", f"{MARK}-private-UT")
    item = pydicom.Dataset()
    item.PatientName, item.PatientID = f"{MARK}-seq-name", f"{MARK}-seq-id"
    inner = pydicom.Dataset()
    inner.InstitutionName = f"{MARK}-nested-institution"
    item.ReferencedStudySequence = [inner]
    ds.OtherPatientIDsSequence = [item]
    ds.save_as(path)


def stuff_deeplesion(root) -> None:
    """Patient_index values become markers, and the rows of one key slice disagree (a reject path)."""
    table = root / "DL_info.csv"
    rows = list(csv.DictReader(table.open(newline="")))
    for i, r in enumerate(rows):
        r["Patient_index"] = f"{MARK}-patient-{r['Patient_index']}"
    first = rows[0]["File_name"]
    twin = dict(next(r for r in rows if r["File_name"] == first), Patient_index=f"{MARK}-other-patient")
    rows.insert(1, twin)
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plant(data_root) -> None:
    dicoms = sorted(p for p in (data_root / "rsna_pneumonia").rglob("*.dcm"))
    for p in dicoms:
        stuff_dicom(p)
    data = dicoms[-1].read_bytes()
    dicoms[-1].write_bytes(data[: len(data) - 300])  # a truncated file: its header reaches the reject path
    stuff_deeplesion(data_root / "deeplesion")


def scan_all(folder) -> list[str]:
    """Plain bytes of every file (SQLite, logs, JSON, the card, PNGs) and every Parquet cell and metadata."""
    found: list[str] = []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        if MARK.lower().encode() in p.read_bytes().lower():
            found.append(str(p))
        if p.suffix == ".parquet":
            table = pq.read_table(p)
            cells = repr(table.schema.metadata) + repr(pq.read_metadata(p).metadata)
            for name in table.column_names:
                cells += repr(table.column(name).to_pylist())
            if MARK.lower() in cells.lower():
                found.append(f"{p} (decoded)")
    return found


def test_markers_never_reach_cli_or_dagster_outputs(tmp_path, monkeypatch, capfd):
    from medlvr.pipelines.cli import main

    data = tmp_path / "data"
    ids = ["rsna_pneumonia", "deeplesion"]
    write_samples(data, ids, seed=0)
    plant(data)
    planted = [p for p in data.rglob("*") if p.is_file() and MARK.encode() in p.read_bytes()]
    assert len(planted) >= 4  # the scan can fail: the inputs hold the markers
    assert main(["ingest", "--data-root", str(data), "--out", str(tmp_path / "ingest"), "--datasets", *ids]) == 0
    assert main(["build-corpus", "--data-root", str(data), "--out", str(tmp_path / "corpus"), "--datasets", *ids]) == 0
    rejects = pq.read_table(tmp_path / "ingest" / "deeplesion" / "rejects.parquet").to_pylist()
    assert any("Patient_index" in r["reason"] for r in rejects)  # the reject path was taken
    rejects = pq.read_table(tmp_path / "ingest" / "rsna_pneumonia" / "rejects.parquet").to_pylist()
    assert any("truncated" in r["reason"] for r in rejects)

    from medlvr.pipelines.main_job import MainJob

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "pipelines" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.delenv("MEDLVR_HOME", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    job = MainJob(home, log=print)
    shutil.copytree(data, job.home / "sample_data")  # the main job's data root, planted
    # the main job's corpus stage (MainJob.corpus), with the reject-share check loosened: the planted rejects are
    # a third of the miniature datasets' records, and the runs must go through to the shards and the card
    loose = {"resources": {"corpus_settings": {"config": {"max_reject_share": 0.5}}}}
    for ds in ids:
        assert job.run("corpus_dataset_job", ds, run_config=loose), ds
    job._bench_root_written()
    publish = job._publish_config()
    publish["resources"]["corpus_settings"]["config"].update(loose["resources"]["corpus_settings"]["config"])
    assert job.run("corpus_publish_job", run_config=publish)
    assert (job.home / "corpus" / "card" / "README.md").is_file()
    logs = capfd.readouterr()
    (tmp_path / "captured.log").write_text(logs.out + logs.err)
    assert list(home.rglob("*.db")), "the Dagster instance wrote no SQLite file"
    found = [f for f in scan_all(tmp_path) if not f.startswith(str(data)) and "/sample_data/" not in f]
    assert not found, "\n".join(found[:20])
