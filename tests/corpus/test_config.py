"""The one config loader (`medlvr.corpus.config`): YAML + dotted overrides, unknown keys and wrong types are
one-line errors naming the key, paths resolve against the working directory once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from medlvr.corpus.config import ConfigError, apply_overrides, build_config, config_to_dict, load_config


@dataclass(frozen=True)
class Engine:
    lr: float = 1e-4
    steps: int = 10
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass(frozen=True)
class Run:
    out_dir: Path = Path("runs/x")
    resume: Path | None = None
    tags: tuple[str, ...] = ()
    sizes: tuple[int, int] = (1, 2)
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.sizes[0] > self.sizes[1]:
            raise ValueError("sizes must be ascending")


@dataclass(frozen=True)
class Recipe:
    engine: Engine = field(default_factory=Engine)
    run: Run = field(default_factory=Run)
    note: str | None = None


def test_yaml_then_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "c.yaml"
    f.write_text("engine: {lr: 1e-5, steps: 3}\nrun: {out_dir: out, tags: [a, b]}\n")
    cfg = load_config(Recipe, f, ["engine.steps=7", "run.resume=ckpt/step-1", "note=null", "run.extra={a: 1}"])
    assert cfg.engine == Engine(lr=1e-5, steps=7)  # "1e-5" is a YAML 1.1 string: read as the float it means
    assert cfg.run.out_dir == tmp_path / "out" and cfg.run.out_dir.is_absolute()
    assert cfg.run.resume == tmp_path / "ckpt" / "step-1" and cfg.run.tags == ("a", "b")
    assert cfg.run.extra == {"a": 1.0} and isinstance(cfg.run.extra["a"], float) and cfg.note is None
    assert build_config(Recipe, config_to_dict(cfg)) == cfg  # round trip through a plain mapping


@pytest.mark.parametrize("overrides, message", [
    (["engine.lrr=1"], "unknown config key engine.lrr (did you mean engine.lr?)"),
    (["engin.lr=1"], "unknown config key engin (did you mean engine?)"),
    (["engine.steps=1.5"], "engine.steps: expected int, got float 1.5"),
    (["engine.steps=true"], "engine.steps: expected int, got bool True"),
    (["engine.lr=fast"], "engine.lr: expected a number, got str 'fast'"),
    (["engine.dtype=fp8"], "engine.dtype: must be one of 'float32', 'bfloat16', got str 'fp8'"),
    (["run.tags=a"], "run.tags: expected a list, got str 'a'"),
    (["run.sizes=[1, 2, 3]"], "run.sizes: expected 2 values, got 3"),
    (["run.sizes=[3, 1]"], "run: sizes must be ascending"),
    (["run=3"], "run: expected a mapping, got int 3"),
    (["engine"], "override must look like section.key=value, got 'engine'"),
    (["engine.lr=0.1", "engine.lr.x=1"], "override engine.lr.x: engine.lr is a value, not a section"),
])
def test_errors_name_the_key_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(Recipe, None, overrides)
    assert str(e.value) == message and "\n" not in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Recipe, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_config(Recipe, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(Recipe, listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Recipe, empty) == Recipe()


def test_overrides_do_not_touch_the_input():
    base = {"engine": {"lr": 1.0}}
    out = apply_overrides(base, ["engine.steps=2"])
    assert base == {"engine": {"lr": 1.0}} and out == {"engine": {"lr": 1.0, "steps": 2}}
