"""Checks on the training assets, read from their latest materialisation: the reported metrics are finite (a NaN
loss is a run that trained nothing), and the checkpoint it names loads (the evaluation would fail on it later).
Blocking: a broken ROI-SFT checkpoint stops VLPO in the same run."""

import math
from pathlib import Path

import dagster as dg

CHECKPOINT_KEYS = ("checkpoint", "final_model", "model_path")  # metadata keys the trainers report the path under


def latest_metadata(instance, asset_key: dg.AssetKey) -> dict:
    ev = instance.get_latest_materialization_event(asset_key)
    return dict(ev.asset_materialization.metadata) if ev and ev.asset_materialization else {}


def checkpoint_model_dir(metadata: dict) -> Path | None:
    """The loadable model folder of a training materialisation: `<checkpoint>/model` when the checkpoint has one
    (a `step-%07d` folder), else the path itself; None when the metadata names none."""
    value = next((metadata[k] for k in CHECKPOINT_KEYS if k in metadata), None)
    value = value.value if hasattr(value, "value") else value
    if not value:  # absent, or reported empty (a run that saved nothing)
        return None
    path = Path(value)
    return path / "model" if (path / "model").is_dir() else path


def non_finite(metadata: dict) -> dict[str, float]:
    """Numeric metadata entries that are NaN or infinite."""
    out = {}
    for k, v in metadata.items():
        x = v.value if hasattr(v, "value") else v
        if isinstance(x, float) and not math.isfinite(x):
            out[k] = x
    return out


def _finite_check(asset: str):
    @dg.asset_check(asset=asset, name=f"{asset}_metrics_finite", blocking=True,
                    description="Every metric the trainer reported (loss, rewards, KL, ...) is finite.")
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        meta = latest_metadata(context.instance, dg.AssetKey(asset))
        bad = non_finite(meta)
        numeric = [k for k, v in meta.items() if isinstance(getattr(v, "value", v), (int, float))]
        return dg.AssetCheckResult(passed=bool(numeric) and not bad, metadata={
            "metrics": len(numeric), "non_finite": dg.MetadataValue.json({k: str(v) for k, v in bad.items()})})

    return check


def _loads_check(asset: str):
    @dg.asset_check(asset=asset, name=f"{asset}_loads", blocking=True,
                    description="The checkpoint the materialisation names loads (model, processor, latent token "
                                "ids) and its weights are finite.")
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        import torch  # only when the check runs: the code location stays light

        from medlvr.training.loading import load_model_or_tiny

        path = checkpoint_model_dir(latest_metadata(context.instance, dg.AssetKey(asset)))
        if path is None or not path.is_dir():
            return dg.AssetCheckResult(passed=False, metadata={"problem": f"no checkpoint folder: {path}"})
        try:
            model, _, _ = load_model_or_tiny(str(path))
        except Exception as e:  # a checkpoint that does not load fails the check, in one line
            return dg.AssetCheckResult(passed=False, metadata={"path": dg.MetadataValue.path(str(path)),
                                                               "problem": f"{type(e).__name__}: {e}"[:500]})
        params = sum(p.numel() for p in model.parameters())
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        return dg.AssetCheckResult(passed=finite, metadata={"path": dg.MetadataValue.path(str(path)),
                                                            "parameters": params, "weights_finite": finite})

    return check


TRAINING_CHECKS = [make(a) for a in ("roi_sft_checkpoint", "vlpo_checkpoint") for make in (_finite_check, _loads_check)]
