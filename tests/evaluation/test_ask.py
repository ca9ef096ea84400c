"""`medlvr ask` (issue 17 point 2): the installed console script on a tiny checkpoint saved offline, with a real
DICOM from pydicom's test data and a real NIfTI from nibabel's test data; bad inputs are one line and exit 2."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medlvr.evaluation import cli as evaluation_cli
from medlvr.evaluation.ask import AskError, read_image, resolve_checkpoint

MEDLVR = Path(sys.executable).parent / "medlvr"  # the venv's console script, as installed
NIFTI = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"  # 3-D T1, int16, 25 slices
NIFTI_4D = Path(nib.__file__).parent / "tests" / "data" / "functional.nii"
CT_DICOM = Path(get_testdata_file("CT_small.dcm"))
MR_DICOM = Path(get_testdata_file("MR_small.dcm"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A run folder as training leaves it: checkpoints/step-0000002/{model/, trainer_state.json, manifest.json}."""
    from medlvr.training.checkpoints import write_manifest
    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import build_tiny

    run = tmp_path_factory.mktemp("run")
    step = run / "checkpoints" / "step-0000002"
    b = build_tiny(seed=0)
    save_checkpoint(b.model, b.processor, step / "model", k_latent=2)
    (step / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    for folder in (run, step):  # the engine writes the training config as config.json there: not a model
        (folder / "config.json").write_text(json.dumps({"run": {"out_dir": str(run)}}))
    write_manifest(step)  # last, as the engine does: only a checkpoint with a manifest is complete
    return run


def medlvr_ask(*args, cwd):
    p = subprocess.run([str(MEDLVR), "ask", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_ask_on_a_dicom_prints_latents_and_writes_the_overlay(ckpt, tmp_path):
    rc, out, err = medlvr_ask("--model", ckpt, "--image", CT_DICOM, "--question", "Which organ is shown?",
                              "--window", "abdomen", "--out", tmp_path / "o", cwd=tmp_path)
    assert rc == 0, err
    assert err == ""  # no progress bars or warnings around the answer
    assert "image: CT_small.dcm (dicom, single frame; 128x128 px after normalisation, window abdomen)" in out
    assert "latent segment: <Medlvr_Start> 2 latent states <Medlvr_End>" in out  # K from the checkpoint
    assert out.count("  latent ") == 2 and "points at x=" in out
    assert "\nanswer: " in out and "generated: <Medlvr_Start><Medlvr_Latent><Medlvr_Latent><Medlvr_End>" in out
    overlay = tmp_path / "o" / "CT_small_latents.png"
    assert f"overlay: {overlay}" in out
    with Image.open(overlay) as im:
        assert im.format == "PNG" and im.width > 2 * im.height  # the image and two latent panels side by side
    assert "PatientID" not in out and "CompressedSamples^CT1" not in out  # no patient identifier printed


def test_ask_on_a_nifti_slice_with_k(ckpt, tmp_path):
    rc, out, err = medlvr_ask("--model", ckpt / "checkpoints" / "step-0000002", "--image", NIFTI, "--slice", 3,
                              "--k", 3, "--question", "Is there a mass?", cwd=tmp_path)
    assert rc == 0, err
    assert "image: anatomical.nii (nifti, slice 3 of 25 along Z; 33x41 px after normalisation" in out
    assert out.count("  latent ") == 3
    assert (tmp_path / "anatomical_latents.png").is_file()  # --out defaults to the current folder


@pytest.mark.parametrize("args, message", [
    (["--model", "{tmp}", "--image", str(CT_DICOM)], "is not a checkpoint: no config.json with safetensors"),
    (["--model", "{ckpt}", "--image", "{tmp}/broken.png"], "cannot read broken.png: not a readable image"),
    (["--model", "{ckpt}", "--image", str(NIFTI), "--slice", "25"], "--slice 25 is outside anatomical.nii's 25 "
                                                                    "slices along Z (0..24)"),
    (["--model", "{ckpt}", "--image", str(CT_DICOM), "--slice", "5"], "--slice 5 is outside CT_small.dcm's single "
                                                                      "frame (0)"),
    (["--model", "{ckpt}", "--image", "{tmp}/missing.dcm"], "no such file"),
])
def test_bad_input_is_one_line_and_exit_2(ckpt, tmp_path, args, message, capsys):
    """In process through the subcommand's parser (a process per case would cost seconds of imports each); the
    console script's own error path is the test below."""
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing
    argv = [a.format(tmp=tmp_path, ckpt=ckpt) for a in args] + ["--question", "q", "--out", str(tmp_path)]
    parser = argparse.ArgumentParser()
    evaluation_cli.register(parser.add_subparsers())
    cli_args = parser.parse_args(["ask", *argv])
    rc = cli_args.fn(cli_args)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("medlvr ask: error: "), err
    assert message in err


def test_console_script_error_is_one_line(tmp_path):
    rc, out, err = medlvr_ask("--model", tmp_path, "--image", CT_DICOM, "--question", "q", cwd=tmp_path)
    assert (rc, out) == (2, "")
    assert err == f"medlvr ask: error: --model {tmp_path} is not a checkpoint: no config.json with safetensors " \
                  f"weights in it, in model/, or in a complete checkpoints/step-* folder\n"


def test_nifti_slice_is_windowed_over_the_whole_volume():
    """The training windowing: percentiles of the volume's non-zero voxels, the same for every slice."""
    # shown in the corpus's display convention: the file is LAS, so y (stored towards anterior) is reversed
    from nibabel.orientations import aff2axcodes

    assert aff2axcodes(nib.load(str(NIFTI)).affine) == ("L", "A", "S")
    vol = np.transpose(np.asanyarray(nib.load(str(NIFTI)).dataobj).astype(np.float32), (2, 1, 0))[:, ::-1, :]
    lo, hi = np.percentile(vol[vol != 0], (0.5, 99.5))
    for z in (0, 12):
        got = read_image(NIFTI, z)
        want = (np.clip((vol[z] - lo) * (255.0 / (hi - lo)), 0, 255) + 0.5).astype(np.uint8)
        assert got.pixels.shape == want.shape and got.slice_index == z and got.n_slices == 25
        assert np.abs(got.pixels.astype(int) - want.astype(int)).max() <= 1
    assert read_image(NIFTI).slice_index == 12  # default: the middle slice


def test_dicom_uses_the_header_window_and_reads_without_a_suffix(tmp_path):
    a = read_image(MR_DICOM)
    assert a.kind == "dicom" and a.pixels.dtype == np.uint8 and a.window in ("dicom_voi", "min_max", "voi_lut")
    plain = tmp_path / "IM0001"  # DICOM files often come without a suffix: found by the DICM magic
    plain.write_bytes(MR_DICOM.read_bytes())
    assert np.array_equal(read_image(plain).pixels, a.pixels)


def test_bad_inputs_in_process(tmp_path):
    with pytest.raises(AskError, match="4-D array"):
        read_image(NIFTI_4D)
    with pytest.raises(AskError, match="--slice is for a NIfTI volume"):
        read_image(_png(tmp_path), 2)
    with pytest.raises(AskError, match="not a CT window"):
        read_image(CT_DICOM, window="kidney")
    with pytest.raises(AskError, match="no such folder"):
        resolve_checkpoint(tmp_path / "nope")


def _png(tmp_path) -> Path:
    p = tmp_path / "x.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)).save(p)
    return p


def test_resolve_checkpoint_accepts_model_step_and_run_folders(ckpt):
    model = ckpt / "checkpoints" / "step-0000002" / "model"
    assert resolve_checkpoint(model) == model
    assert resolve_checkpoint(model.parent) == model
    assert resolve_checkpoint(ckpt) == model


def test_axis_order_cannot_override_the_affine():
    """As in the corpus: a 3-D NIfTI's affine names its axes, so --axis-order ZYX reads the same slices as XYZ."""
    shape = nib.load(str(NIFTI)).shape  # (X, Y, Z) on disk, the affine says so
    zyx = read_image(NIFTI, 0, axis_order="ZYX")
    assert zyx.n_slices == shape[2] and np.array_equal(zyx.pixels, read_image(NIFTI, 0).pixels)
    with pytest.raises(AskError, match="--axis-order XY:"):
        read_image(NIFTI, axis_order="XY")


@pytest.mark.parametrize("affine", [np.diag([0.9, 0.9, 2.0, 1.0]), np.diag([-0.9, -0.9, 2.0, 1.0]),
                                    np.array([[0, 0, -2.0, 0], [0, 0.9, 0, 0], [0.9, 0, 0, 0], [0, 0, 0, 1]])],
                         ids=["RAS", "LPS", "permuted"])
def test_ask_shows_a_slice_as_ingest_does(tmp_path, affine):
    """One source of truth: the slice ask shows and the one ingest stores (same file, same slice) are equal
    pixel for pixel after the same normalisation."""
    from medlvr.corpus.adapters import ADAPTERS
    from medlvr.corpus.normalize import NormaliseConfig, normalise_image
    from tests.corpus.test_adapter_nifti import spec_with

    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    (root / "files").mkdir(parents=True)
    arr = rng.integers(1, 1000, (20, 16, 10)).astype(np.int16)
    arr[2:6, 1:4, :] = 3000  # an asymmetric bright block: a flip of x or y changes the slice
    nib.save(nib.Nifti1Image(arr, affine), str(root / "files" / "v.nii.gz"))
    spec = spec_with("kits23", anchor_glob="files/*.nii.gz", anchor_regex=None, label=None, label_rules=[],
                     axis_order="XYZ", intensity="percentile", slices={"negatives_per_volume": 30})
    adapter = ADAPTERS[spec.adapter]
    ref = next(adapter.discover(spec, root))
    stored = adapter.load(spec, root, ref)
    assert stored
    for im in stored:
        want, _, _ = normalise_image(im, {}, NormaliseConfig())
        got = read_image(root / "files" / "v.nii.gz", im.slice_index)
        assert np.array_equal(got.pixels, want), im.slice_index


ERROR_PATHS = {  # a bad input of each kind, as typed on the command line, and its one line
    "missing image": (["--image", "{tmp}/missing.dcm", "--question", "q"], "--image {tmp}/missing.dcm: no such file"),
    "empty question": (["--image", str(CT_DICOM), "--question", "  "], "--question is empty"),
    "negative k": (["--image", str(CT_DICOM), "--question", "q", "--k", "-1"], "--k must be >= 0, got -1"),
    "slice on a single-frame DICOM": (["--image", str(CT_DICOM), "--question", "q", "--slice", "5"],
                                      "--slice 5 is outside CT_small.dcm's single frame (0)"),
    "slice past the volume": (["--image", str(NIFTI), "--question", "q", "--slice", "99"],
                              "--slice 99 is outside anatomical.nii's 25 slices along Z (0..24)"),
    "slice on a PNG": (["--image", "{tmp}/x.png", "--question", "q", "--slice", "1"],
                       "--slice is for a NIfTI volume or a multi-frame DICOM; x.png is one image"),
}


@pytest.mark.parametrize("case", list(ERROR_PATHS))
def test_console_script_error_paths_are_one_line_in_a_pipe(ckpt, tmp_path, case):
    """Through the installed console script with stdout and stderr on pipes: one line, exit 2, nothing on stdout."""
    _png(tmp_path)
    args, message = ERROR_PATHS[case]
    rc, out, err = medlvr_ask("--model", ckpt, *[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    assert (rc, out) == (2, ""), err
    assert err == f"medlvr ask: error: {message.format(tmp=tmp_path)}\n"


def test_error_paths_never_import_torch(ckpt, tmp_path):
    """The checks run before torch and transformers load (a bad input is reported in well under a second, not
    after ~10 s of imports): each error path of the CLI, in a fresh interpreter, leaves torch out of sys.modules."""
    _png(tmp_path)
    cases = [[a.format(tmp=tmp_path) for a in args] for args, _ in ERROR_PATHS.values()]
    script = (
        "import json, sys\n"
        "from medlvr.pipelines.cli import main\n"
        f"for args in {cases!r}:\n"
        f"    assert main(['ask', '--model', {str(ckpt)!r}, *args]) == 2, args\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules)))\n")
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1]) == []
    assert len(p.stderr.strip().splitlines()) == len(cases)  # one line each


def test_dicom_suffixes_are_the_corpus_readers():
    from medlvr.corpus.adapters.images import DICOM_SUFFIXES
    from medlvr.evaluation import ask

    assert ask.DICOM_SUFFIXES == DICOM_SUFFIXES


def test_the_slice_read_is_reported(ckpt):
    """Which slice or frame was read, and whether by default, is in the first line of the output."""
    from medlvr.evaluation.ask import AskResult, format_result

    img = read_image(NIFTI)
    first = format_result(AskResult("a", "a", 0, [], img, None), "anatomical.nii").splitlines()[0]
    assert "slice 12 of 25 along Z (by default; --slice N picks another)" in first
    img = read_image(CT_DICOM, 0)
    assert "(dicom, single frame;" in format_result(AskResult("a", "a", 0, [], img, None), "CT_small.dcm")
