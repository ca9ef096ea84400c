"""Every corner of the evaluation config goes through the one loader: a mistyped key in an optional section
(`fig5.benchmrk`, `efficiency.sed`, ...), in a benchmark's loader arguments (`benchmarks.vqa_rad.splitt`) or a
mistyped benchmark name is one line with a did-you-mean and exit 2, through the console script; values are typed."""

import subprocess
import sys
from pathlib import Path

import pytest

from medlvr.corpus.config import ConfigError
from medlvr.evaluation.config import load_eval_config

REPO = Path(__file__).resolve().parents[2]
MEDLVR = Path(sys.executable).parent / "medlvr"
SAMPLE = REPO / "configs" / "eval_sample.yaml"


@pytest.mark.parametrize("override, line", [
    ("fig5.benchmrk=slake", "unknown config key fig5.benchmrk (did you mean fig5.benchmark?)"),
    ("efficiency.sed=1", "unknown config key efficiency.sed (did you mean efficiency.seed?)"),
    ("ablation.noise_scael=2", "unknown config key ablation.noise_scael (did you mean ablation.noise_scale?)"),
    ("table4.modles=[base]", "unknown config key table4.modles (did you mean table4.models?)"),
    ("fig3.n_sample=2", "unknown config key fig3.n_sample (did you mean fig3.n_samples?)"),
    ("latent_diagnostics.limt=2", "unknown config key latent_diagnostics.limt (did you mean latent_diagnostics.limit?)"),
    ("benchmarks.vqa_rad.splitt=test", "unknown config key benchmarks.vqa_rad.splitt (did you mean "
                                       "benchmarks.vqa_rad.split?)"),
    ("benchmarks.vqarad.split=test", "unknown config key benchmarks.vqarad (did you mean benchmarks.vqa_rad?)"),
    ("ablation.noise_scale=loud", "ablation.noise_scale: expected a number, got str 'loud'"),
    ("benchmarks.vqa_rad.split=[test]", "benchmarks.vqa_rad.split: expected str, got list ['test']"),
])
def test_a_typo_anywhere_is_one_line(override, line):
    with pytest.raises(ConfigError) as e:
        load_eval_config(SAMPLE, [override])
    assert str(e.value) == line


@pytest.mark.parametrize("override, line", [
    ("fig5.benchmrk=slake", "medlvr: error: unknown config key fig5.benchmrk (did you mean fig5.benchmark?)"),
    ("benchmarks.vqa_rad.splitt=test", "medlvr: error: unknown config key benchmarks.vqa_rad.splitt (did you mean "
                                       "benchmarks.vqa_rad.split?)"),
])
def test_through_the_console_script(tmp_path, override, line):
    p = subprocess.run([str(MEDLVR), "evaluate", "--config", str(SAMPLE), "--set", override, "--out",
                        str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout, p.stderr.splitlines()) == (2, "", [line])


def test_the_shipped_configs_still_load():
    for name in ("eval_sample.yaml", "eval_demo.yaml", "eval_endpoint.yaml"):
        cfg = load_eval_config(REPO / "configs" / name, ["models=[{name: m, path: tiny, k_latent: 0}]",
                                                         "efficiency.models=[m]", "table4.models=[m]",
                                                         "fig3.models=[m]", "fig5.model=m", "ablation.model=m"]
                               if name != "eval_endpoint.yaml" else [])
        assert cfg.benchmarks
    cfg = load_eval_config(SAMPLE, ["benchmarks.vqa_rad.split=train", "benchmarks.mmmu_hm.subjects=[Pharmacy]"])
    assert cfg.benchmarks["vqa_rad"]["split"] == "train" and cfg.benchmarks["mmmu_hm"]["subjects"] == ("Pharmacy",)
