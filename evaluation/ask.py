"""`medlvr ask`: one question on one image, with the latent segment shown and mapped onto the image.

* The image: PNG/JPEG (and anything PIL reads), a DICOM file, or a NIfTI volume with a slice index, read by the
  corpus readers (`medlvr.corpus.adapters`) and normalised like a corpus image (`normalise_image`: 8-bit, longest
  side 512). A NIfTI volume is shown in the corpus's display convention, through ingest's own reader
  (`corpus.adapters.nifti.read_displayed`: x towards the patient's left, y towards posterior, from the affine).
  Windowing is the training one: the DICOM header's VOI window (or the full range), the
  percentiles of the volume's non-zero voxels for a NIfTI volume (`volume_window`), 8-bit images as they are;
  `window` names a CT preset (`CT_WINDOWS`) to read CT values in HU instead.
* The model: a checkpoint folder (`model/` of a training checkpoint, the checkpoint folder itself, or a run's
  `out_dir`, whose newest checkpoint is taken). K is the checkpoint's (`medlvr_latent.json`) unless given.
* Decoding: greedy latent decoding (`latent_generate`), the question sent as the user typed it after the image.
* Where a latent state points: cosine similarity of each fed-back latent state to the image's visual tokens (the
  merger outputs, the space ROI-SFT pulls the latents towards, `medlvr.training.roi_targets`), as a map over the
  image (`grid_heatmap`, the report's heatmap layout) drawn by `plot_latent_overlay`; the printed "reads as" is
  the lm_head's top tokens for the state (what it would say if decoded).

Every bad input is an `AskError` with a one-line message; the CLI prints it and exits 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlvr.corpus.normalize import CT_WINDOWS, NormaliseConfig, normalise_image
from medlvr.corpus.records import RecordError, SourceImage
from medlvr.training.checkpoints import latest_checkpoint, read_latent_info

if TYPE_CHECKING:
    import torch

# torch, transformers and the model code are imported by `ask` itself, after every input has been checked: a
# missing file, an empty question or a slice out of range is reported in a fraction of a second, not after the
# ~10 s it takes to import them (tests/evaluation/test_ask.py checks that the error paths never import torch)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")  # as the corpus readers take them (corpus.adapters.images; not imported
# here: importing it loads every adapter, and ask checks its arguments before that)
TOP_TOKENS = 3  # tokens printed per latent state


class AskError(Exception):
    """A bad input of `medlvr ask` (unreadable image, not a checkpoint, slice out of range): one line."""


@dataclass
class AskImage:
    pixels: np.ndarray  # 8-bit HxW or HxWx3, as the corpus would store it
    kind: str  # png/jpeg..., dicom, nifti
    window: str  # how intensities became 8-bit
    slice_index: int | None = None  # the NIfTI slice or DICOM frame that was read
    n_slices: int | None = None  # slices of the volume, frames of the DICOM file
    default_slice: bool = False  # slice_index was chosen by default (no --slice)


@dataclass
class LatentStep:
    heatmap: np.ndarray  # (grid_h / 2, grid_w / 2) in [0, 1]
    peak_xy: tuple[int, int]  # centre of the most similar visual token, in pixels of the shown image
    peak_cos: float
    reads_as: list[str] = field(default_factory=list)


@dataclass
class AskResult:
    answer: str  # the text after the latent segment
    raw: str  # everything generated, control tokens included
    k_latent: int
    steps: list[LatentStep]
    image: AskImage
    overlay: Path | None


# --------------------------------------------------------------------------------------------------- inputs


def resolve_checkpoint(path: str | Path) -> Path:
    """The folder holding config.json + weights: `path` itself, its `model/`, or its newest checkpoint's model/."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise AskError(f"--model {path}: no such folder (give a checkpoint folder with config.json)")
    newest = latest_checkpoint(p)
    for cand in (p, p / "model", *([newest / "model"] if newest is not None else [])):
        if _is_model_folder(cand):
            return cand
    raise AskError(f"--model {path} is not a checkpoint: no config.json with safetensors weights in it, in model/, "
                   f"or in a complete checkpoints/step-* folder")


def _is_model_folder(folder: Path) -> bool:
    """config.json AND weights: run and checkpoint folders hold a config.json too (the training config)."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors*"))


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom(path: Path) -> bool:
    """By suffix, or by the DICM magic at byte 128 (DICOM files often have no suffix at all)."""
    if _suffix(path) in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def check_image(path: str | Path, slice_index: int | None = None, window: str | None = None,
                axis_order: str = "XYZ") -> dict:
    """Every check on --image, --slice, --window and --axis-order that the file's header can answer, before any
    pixel is decoded: {"kind", "slice_index", "n_slices", "default_slice"} (the slice or frame that will be read).
    A --slice outside the volume's slices or the DICOM file's frames (a single-frame file has frame 0 only), or a
    --slice on a 2-D image, is an error."""
    path = Path(path).expanduser()
    if sorted(axis_order.upper()) != sorted("XYZ"):
        raise AskError(f"--axis-order {axis_order}: give the three letters X, Y, Z in the array's order (XYZ, ZYX)")
    if window is not None and window not in CT_WINDOWS:
        raise AskError(f"--window {window}: not a CT window; one of {', '.join(CT_WINDOWS)}")
    if not path.is_file():
        raise AskError(f"--image {path}: no such file")
    try:
        if _suffix(path) in NIFTI_SUFFIXES:
            kind, n, default = "nifti", _nifti_slices(path, axis_order.upper()), None
        elif _is_dicom(path):
            kind, n, default = "dicom", _dicom_frames(path), 0
        else:
            if slice_index is not None:
                raise AskError(f"--slice is for a NIfTI volume or a multi-frame DICOM; {path.name} is one image")
            return {"kind": _suffix(path).lstrip(".") or "image"}
    except OSError as e:  # unreadable (permissions, a device): the reason, never a traceback
        raise AskError(f"cannot read {path.name}: {e.strerror or type(e).__name__}") from None
    chosen = (n // 2 if default is None else default) if slice_index is None else slice_index
    if not 0 <= chosen < n:
        what = "slices along Z" if kind == "nifti" else "frames"
        raise AskError(f"--slice {slice_index} is outside {path.name}'s "
                       + ("single frame (0)" if n == 1 and kind == "dicom" else f"{n} {what} (0..{n - 1})"))
    return {"kind": kind, "slice_index": chosen, "n_slices": n, "default_slice": slice_index is None}


def _nifti_slices(path: Path, axis_order: str) -> int:
    """Slices along Z, from the header alone: Z is the axis the display convention (corpus.orientation, as
    ingest applies it) makes the slice axis, named by the affine."""
    import nibabel as nib

    from medlvr.corpus.orientation import display_axes

    try:
        img = nib.load(str(path))
        shape = list(img.shape)
        if len(shape) >= 3:
            axis_order = display_axes(img.affine[:3, :3])[0]
    except Exception as e:  # nibabel raises several types for a damaged header
        raise AskError(f"cannot read {path.name}: not a readable NIfTI file ({type(e).__name__})") from None
    while len(shape) > 3 and shape[-1] == 1:  # NIfTI pads dims with 1
        shape.pop()
    if len(shape) != 3:
        raise AskError(f"{path.name}: a {len(shape)}-D array of shape {tuple(shape)}; ask reads a 3-D volume")
    return int(shape[axis_order.index("Z")])


def _read_volume_slice(path: Path, z: int, window: str | None, axis_order: str) -> SourceImage:
    from medlvr.corpus.adapters.nifti import read_displayed, to_zyx
    from medlvr.corpus.volumes import volume_window

    # the corpus's own reader: the same display convention (from the affine) as the slices the model trained on
    arr, zooms, order = read_displayed(path.parent, path.name, axis_order, {})
    vol, _ = to_zyx(arr, zooms, order)
    if not np.isfinite(vol).all():
        vol = np.nan_to_num(vol.astype(np.float32), nan=float(np.nanmin(vol)), posinf=0.0, neginf=0.0)
    if window:
        return SourceImage(path.name, vol[z], "ct_hu")
    if vol.dtype == np.uint8:
        return SourceImage(path.name, vol[z], "uint8")
    lo, hi = volume_window(vol, name=path.name)
    return SourceImage(path.name, vol[z], "window", window=(lo, hi), window_name="p0.5-99.5 of the volume")


def read_image(path: str | Path, slice_index: int | None = None, window: str | None = None,
               axis_order: str = "XYZ", cfg: NormaliseConfig = NormaliseConfig()) -> AskImage:
    """The image as the corpus would store it (module docstring); `slice_index`: a NIfTI slice (default the
    middle one) or a multi-frame DICOM frame (default 0); `axis_order`: the NIfTI array's axes on disk (the NIfTI
    convention XYZ; KiTS stores ZYX), as the catalog's `axis_order`. `check_image` runs first."""
    info = check_image(path, slice_index, window, axis_order)
    path = Path(path).expanduser()
    from medlvr.corpus.adapters.images import read_2d, read_dicom  # the corpus readers, once the inputs are good

    try:
        if info["kind"] == "nifti":
            src = _read_volume_slice(path, info["slice_index"], window, axis_order.upper())
        else:
            px = read_dicom(path, ct=window is not None, multi_frame=info["slice_index"]) if info["kind"] == "dicom" \
                else read_2d(path)
            src = SourceImage(path.name, px.array, px.intensity, window=px.window, window_name=px.window_name)
        img8, _, done = normalise_image(src, {"window": window} if window else {}, cfg)
    except RecordError as e:
        raise AskError(f"cannot read {path.name}: {e}") from None
    except OSError as e:  # unreadable (permissions, a device): the reason, never a traceback
        raise AskError(f"cannot read {path.name}: {e.strerror or type(e).__name__}") from None
    how = done.get("window_name") or done["intensity"]
    return AskImage(img8, info["kind"], str(how), info.get("slice_index"), info.get("n_slices"),
                    info.get("default_slice", False))


def _dicom_frames(path: Path) -> int:
    """NumberOfFrames from the header alone (1 when absent), so a --slice out of range is refused before decoding."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, ValueError) as e:
        raise AskError(f"cannot read {path.name}: not a readable DICOM file ({type(e).__name__})") from None
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


# --------------------------------------------------------------------------------------------------- asking


def check_question(question: str, k_latent: int | None) -> None:
    """The question and K, checked before anything is loaded."""
    if not question.strip():
        raise AskError("--question is empty")
    if k_latent is not None and k_latent < 0:
        raise AskError(f"--k must be >= 0, got {k_latent}")


def ask(model_path: str | Path, image: AskImage, question: str, k_latent: int | None = None,
        out_dir: str | Path | None = None, max_new_tokens: int = 64, name: str = "ask") -> AskResult:
    """Answer `question` about `image` with the checkpoint at `model_path`; write the overlay PNG into `out_dir`."""
    check_question(question, k_latent)
    ckpt = resolve_checkpoint(model_path)
    import torch  # the inputs are good: now pay for torch and the model code

    with torch.no_grad():
        return _ask(ckpt, model_path, image, question, k_latent, out_dir, max_new_tokens, name)


def _ask(ckpt: Path, model_path, image: AskImage, question: str, k_latent: int | None, out_dir, max_new_tokens: int,
         name: str) -> AskResult:
    from PIL import Image

    from medlvr.evaluation.figures import plot_latent_overlay
    from medlvr.evaluation.inference import resolve_device
    from medlvr.training.latent_decode import DecodeConfig, latent_generate
    from medlvr.training.loading import load_model_or_tiny
    from medlvr.training.model import eos_token_ids

    if k_latent is None:
        info = read_latent_info(ckpt)
        k_latent = info["k_latent"] if info else 0
    device = resolve_device("auto")  # the GPU when there is one (bf16 there: a 7B model in fp32 is 30 GB)
    try:
        model, processor, ids = load_model_or_tiny(str(ckpt), dtype="bfloat16" if device.type == "cuda" else "float32",
                                                   device=device)
    except (OSError, ValueError) as e:
        raise AskError(f"--model {model_path}: cannot load the checkpoint: {' '.join(str(e).split())}") from None
    pil = Image.fromarray(image.pixels).convert("RGB")
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.strip()}]}]
    text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], images=[pil], return_tensors="pt")
    cfg = DecodeConfig(k_latent=k_latent, max_new_tokens=max_new_tokens + k_latent + 2, force_start=k_latent > 0,
                       eos_token_ids=eos_token_ids(model))
    out = latent_generate(model, enc, ids, cfg)
    n_gen = int(out.gen_mask[0].sum())
    seq = [int(t) for t in out.sequences[0, :n_gen]]
    stop = set(cfg.eos_token_ids or ()) | {processor.tokenizer.pad_token_id}
    seq = [t for t in seq if t not in stop]
    raw = processor.tokenizer.decode(seq, skip_special_tokens=False)
    after = seq[seq.index(ids.end) + 1:] if ids.end in seq else ([] if k_latent else seq)
    answer = processor.tokenizer.decode(after, skip_special_tokens=True).strip()

    steps = _latent_steps(model, processor, enc, out.z[0, : int(out.n_latent[0])], image.pixels.shape[:2])
    overlay = None
    if out_dir is not None and steps:
        titles = [f"latent {i + 1}: peak cos {s.peak_cos:.2f}" for i, s in enumerate(steps)]
        overlay = plot_latent_overlay(image.pixels, [s.heatmap for s in steps], titles,
                                      Path(out_dir) / f"{name}_latents.png")
    return AskResult(answer, raw, k_latent, steps, image, overlay)


def _latent_steps(model, processor, enc, z: torch.Tensor, hw: tuple[int, int]) -> list[LatentStep]:
    """Per fed-back latent state: its similarity map over the image, the peak, and the tokens it reads as."""
    import torch

    from medlvr.evaluation.attention import grid_heatmap
    from medlvr.training.vlm_inputs import image_embeddings

    if z.shape[0] == 0:
        return []
    dev = model.device
    grid = enc["image_grid_thw"].to(dev)
    visual = image_embeddings(model, enc["pixel_values"].to(dev), grid).float()  # (n_tokens, D)
    zf = z.to(dev).float()
    cos = torch.nn.functional.normalize(zf, dim=-1) @ torch.nn.functional.normalize(visual, dim=-1).T  # (K, n)
    logits = model.lm_head(z.to(dev, model.lm_head.weight.dtype)).float()
    top = logits.topk(TOP_TOKENS, dim=-1).indices.tolist()
    _, gh, gw = (int(v) for v in grid[0])
    rows, cols = gh // 2, gw // 2
    h, w = hw
    steps = []
    for k in range(zf.shape[0]):
        best = int(cos[k, : rows * cols].argmax())
        r, c = divmod(best, cols)
        peak = (int((c + 0.5) * w / cols), int((r + 0.5) * h / rows))
        reads = [processor.tokenizer.decode([t]) for t in top[k]]
        steps.append(LatentStep(grid_heatmap(cos[k], grid[0]), peak, float(cos[k, best]), reads))
    return steps


def format_result(res: AskResult, image_name: str) -> str:
    """What `medlvr ask` prints: the image as read, the latent segment (one line per state), the answer."""
    img = res.image
    h, w = img.pixels.shape[:2]
    where = ""  # which slice or frame was read, and whether by default
    if img.kind == "nifti":
        where = f", slice {img.slice_index} of {img.n_slices} along Z"
    elif img.kind == "dicom":
        where = ", single frame" if img.n_slices == 1 else f", frame {img.slice_index} of {img.n_slices}"
    if img.default_slice and img.n_slices and img.n_slices > 1:
        where += " (by default; --slice N picks another)"
    lines = [f"image: {image_name} ({img.kind}{where}; {w}x{h} px after normalisation, window {img.window})"]
    if res.steps:
        lines.append(f"latent segment: <Medlvr_Start> {len(res.steps)} latent states <Medlvr_End>")
        for i, s in enumerate(res.steps, 1):
            reads = ", ".join(repr(t) for t in s.reads_as)
            lines.append(f"  latent {i}: points at x={s.peak_xy[0]} y={s.peak_xy[1]} (cos {s.peak_cos:.2f}); "
                         f"reads as {reads}")
    else:
        lines.append("latent segment: none (K = 0: plain decoding)")
    lines.append(f"generated: {res.raw}")
    lines.append(f"answer: {res.answer}")
    if res.overlay is not None:
        lines.append(f"overlay: {res.overlay}")
    return "\n".join(lines)
