"""`medlvr ask`: one question on one image, with the latent segment shown and mapped onto the image.

* The image: PNG/JPEG (and anything PIL reads), a DICOM file, or a NIfTI volume with a slice index, read by the
  corpus readers (`medlvr.corpus.adapters`) and normalised like a corpus image (`normalise_image`: 8-bit, longest
  side 512). Windowing is the training one: the DICOM header's VOI window (or the full range), the
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

import numpy as np
import torch
from PIL import Image

from medlvr.corpus.adapters.images import DICOM_SUFFIXES, read_2d, read_dicom
from medlvr.corpus.adapters.nifti import read_nifti, to_zyx
from medlvr.corpus.normalize import CT_WINDOWS, NormaliseConfig, normalise_image
from medlvr.corpus.records import RecordError, SourceImage
from medlvr.corpus.volumes import volume_window
from medlvr.evaluation.attention import grid_heatmap
from medlvr.evaluation.figures import plot_latent_overlay
from medlvr.evaluation.inference import resolve_device
from medlvr.training.checkpoints import latest_checkpoint, read_latent_info
from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.loading import load_model_or_tiny
from medlvr.training.model import eos_token_ids
from medlvr.training.vlm_inputs import image_embeddings

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TOP_TOKENS = 3  # tokens printed per latent state


class AskError(Exception):
    """A bad input of `medlvr ask` (unreadable image, not a checkpoint, slice out of range): one line."""


@dataclass
class AskImage:
    pixels: np.ndarray  # 8-bit HxW or HxWx3, as the corpus would store it
    kind: str  # png/jpeg..., dicom, nifti
    window: str  # how intensities became 8-bit
    slice_index: int | None = None
    n_slices: int | None = None


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


def _read_volume_slice(path: Path, slice_index: int | None, window: str | None, axis_order: str
                       ) -> tuple[SourceImage, dict]:
    arr, zooms = read_nifti(path.parent, path.name)
    while arr.ndim > 3 and arr.shape[-1] == 1:  # NIfTI pads dims with 1
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise AskError(f"{path.name}: a {arr.ndim}-D array of shape {arr.shape}; ask reads a 3-D volume")
    vol, _ = to_zyx(arr, zooms, axis_order)  # slices along Z, as the corpus takes them
    n = vol.shape[0]
    z = n // 2 if slice_index is None else slice_index
    if not 0 <= z < n:
        raise AskError(f"--slice {slice_index} is outside {path.name}'s {n} slices (0..{n - 1})")
    if not np.isfinite(vol).all():
        vol = np.nan_to_num(vol.astype(np.float32), nan=float(np.nanmin(vol)), posinf=0.0, neginf=0.0)
    info = {"kind": "nifti", "slice_index": z, "n_slices": n}
    if window:
        return SourceImage(path.name, vol[z], "ct_hu"), info
    if vol.dtype == np.uint8:
        return SourceImage(path.name, vol[z], "uint8"), info
    lo, hi = volume_window(vol, name=path.name)
    return SourceImage(path.name, vol[z], "window", window=(lo, hi), window_name="p0.5-99.5 of the volume"), info


def read_image(path: str | Path, slice_index: int | None = None, window: str | None = None,
               axis_order: str = "XYZ", cfg: NormaliseConfig = NormaliseConfig()) -> AskImage:
    """The image as the corpus would store it (module docstring); `slice_index`: a NIfTI slice (default the
    middle one) or a multi-frame DICOM frame; `axis_order`: the NIfTI array's axes on disk (the NIfTI convention
    XYZ; KiTS stores ZYX), as the catalog's `axis_order`."""
    path = Path(path).expanduser()
    if sorted(axis_order.upper()) != sorted("XYZ"):
        raise AskError(f"--axis-order {axis_order}: give the three letters X, Y, Z in the array's order (XYZ, ZYX)")
    if window is not None and window not in CT_WINDOWS:
        raise AskError(f"--window {window}: not a CT window; one of {', '.join(CT_WINDOWS)}")
    if not path.is_file():
        raise AskError(f"--image {path}: no such file")
    try:
        if _suffix(path) in NIFTI_SUFFIXES:
            src, info = _read_volume_slice(path, slice_index, window, axis_order.upper())
        else:
            dicom = _is_dicom(path)
            if slice_index is not None and not dicom:
                raise AskError(f"--slice is for a NIfTI volume or a multi-frame DICOM; {path.name} is one image")
            px = read_dicom(path, ct=window is not None, multi_frame=slice_index or 0) if dicom else read_2d(path)
            src = SourceImage(path.name, px.array, px.intensity, window=px.window, window_name=px.window_name)
            info = {"kind": "dicom" if dicom else (_suffix(path).lstrip(".") or "image")}
        img8, _, done = normalise_image(src, {"window": window} if window else {}, cfg)
    except RecordError as e:
        raise AskError(f"cannot read {path.name}: {e}") from None
    except OSError as e:  # unreadable (permissions, a device): the reason, never a traceback
        raise AskError(f"cannot read {path.name}: {e.strerror or type(e).__name__}") from None
    how = done.get("window_name") or done["intensity"]
    return AskImage(img8, info["kind"], str(how), info.get("slice_index"), info.get("n_slices"))


# --------------------------------------------------------------------------------------------------- asking


@torch.no_grad()
def ask(model_path: str | Path, image: AskImage, question: str, k_latent: int | None = None,
        out_dir: str | Path | None = None, max_new_tokens: int = 64, name: str = "ask") -> AskResult:
    """Answer `question` about `image` with the checkpoint at `model_path`; write the overlay PNG into `out_dir`."""
    ckpt = resolve_checkpoint(model_path)
    if not question.strip():
        raise AskError("--question is empty")
    if k_latent is None:
        info = read_latent_info(ckpt)
        k_latent = info["k_latent"] if info else 0
    if k_latent < 0:
        raise AskError(f"--k must be >= 0, got {k_latent}")
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
    where = f", slice {img.slice_index} of {img.n_slices}" if img.slice_index is not None else ""
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
