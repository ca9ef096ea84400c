"""The checks on the training assets and the evaluation report fail on what they guard against: a NaN metric, a
checkpoint folder that does not load, unparseable answers above the threshold."""

import math

import dagster as dg

from medlvr.pipelines.evaluation.assets import parse_fail_rate_below_threshold
from medlvr.pipelines.training.checks import TRAINING_CHECKS, checkpoint_model_dir, non_finite


def test_non_finite_and_checkpoint_dir(tmp_path):
    bad = non_finite({"loss": dg.MetadataValue.float(math.nan), "kl": 0.1, "steps": 3, "reward": math.inf})
    assert set(bad) == {"loss", "reward"}
    assert non_finite({"loss": 0.5, "checkpoint": "x"}) == {}
    step = tmp_path / "step-0000004"
    (step / "model").mkdir(parents=True)
    assert checkpoint_model_dir({"checkpoint": dg.MetadataValue.path(str(step))}) == step / "model"
    assert checkpoint_model_dir({"final_model": str(tmp_path)}) == tmp_path
    assert checkpoint_model_dir({"loss": 1.0}) is None


def _fake_roi_sft(metadata: dict):
    @dg.asset(name="roi_sft_checkpoint")
    def fake() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=metadata)

    return fake


def _evaluations(metadata: dict) -> dict:
    checks = [c for c in TRAINING_CHECKS if next(iter(c.check_keys)).asset_key == dg.AssetKey("roi_sft_checkpoint")]
    res = dg.materialize([_fake_roi_sft(metadata), *checks], instance=dg.DagsterInstance.ephemeral(),
                         raise_on_error=False)
    return {e.check_name: e for e in res.get_asset_check_evaluations()}


def test_a_nan_loss_and_an_unloadable_checkpoint_fail_their_checks(tmp_path):
    broken = tmp_path / "step-0000030" / "model"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    evals = _evaluations({"loss": math.nan, "ce": 1.0, "checkpoint": str(broken.parent)})
    assert not evals["roi_sft_checkpoint_metrics_finite"].passed
    assert evals["roi_sft_checkpoint_metrics_finite"].metadata["non_finite"].value == {"loss": "nan"}
    assert not evals["roi_sft_checkpoint_loads"].passed
    evals = _evaluations({"loss": 0.3, "checkpoint": str(tmp_path / "missing")})
    assert evals["roi_sft_checkpoint_metrics_finite"].passed and not evals["roi_sft_checkpoint_loads"].passed


def test_parse_fail_check_judges_trained_models_only(tmp_path, monkeypatch):
    from medlvr.pipelines.evaluation import assets

    class Settings:
        max_parse_fail_rate = 0.25

        def load(self):
            from medlvr.corpus.config import build_config
            from medlvr.evaluation.config import EvalConfig

            return build_config(EvalConfig, {"out_dir": str(tmp_path), "benchmarks": {"slake": {"path": str(tmp_path)}},
                                             "models": [{"name": "base", "path": "tiny", "k_latent": 0},
                                                        {"name": "ft", "path": str(tmp_path), "k_latent": 0}]})

    for rates, passed in (({"base": (10, 10), "ft": (2, 10)}, True), ({"base": (0, 10), "ft": (3, 10)}, False)):
        monkeypatch.setattr(assets, "parse_fail_rates", lambda cfg, r=rates: r)
        result = parse_fail_rate_below_threshold(evaluation=Settings())
        assert result.passed is passed, rates
