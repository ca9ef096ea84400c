"""The `medlvr evaluate --config FILE` configuration (YAML), as plain dataclasses.

Every section but `models` and `benchmarks` is optional; a missing section switches that table / figure off.
See `configs/eval_sample.yaml` for a complete example and `EvalConfig.from_dict` for the accepted keys.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from medlvr.corpus.evalsets.registry import all_benchmarks

# Derived from the benchmark registry (each benchmark's module registers its own facts):
_REGISTERED = all_benchmarks()
BENCHMARKS = tuple(_REGISTERED)  # table order
EXTERNAL = tuple(b for b, spec in _REGISTERED.items() if spec.external)  # Table 2
# Table 3: the 485-item efficiency subset (docs/benchmarks.md): benchmark -> quota, and its kind restriction
EFFICIENCY_QUOTAS = {b: spec.efficiency_quota for b, spec in _REGISTERED.items() if spec.efficiency_quota}
EFFICIENCY_KINDS = {b: spec.efficiency_kind for b, spec in _REGISTERED.items() if spec.efficiency_kind}
# folder of a benchmark under data_root (= the folder its sample writer fills)
DATA_DIRS = {b: spec.data_dir for b, spec in _REGISTERED.items()}
PROMPT_STYLES = ("direct", "tags")
ABLATIONS = ("zero", "shuffle", "noise")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str  # label in tables and prediction files
    path: str  # local checkpoint dir, base model dir, or "tiny" / "tiny:SEED" (offline random tiny model)
    k_latent: int = 8  # latent budget K; 0 = plain decoding (the base model)
    prompt_style: str = "tags"  # "tags": <answer> tags (reasoning model); "direct": standard direct-answer prompt
    variant: str = ""  # training variant label for Table 4 (default: the name)

    @property
    def label(self) -> str:
        return self.variant or self.name


@dataclass(frozen=True)
class DecodeSettings:
    batch_size: int = 8
    max_new_tokens: int = 64
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448  # fixed pixel budget, recorded in every run's meta file
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    attn_implementation: str = "sdpa"
    seed: int = 0
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave as is


@dataclass(frozen=True)
class EvalConfig:
    out_dir: Path
    models: tuple[ModelSpec, ...]
    benchmarks: dict[str, dict[str, Any]]  # name -> {"path": dir, loader kwargs...}
    decode: DecodeSettings = DecodeSettings()
    limit: int | None = None  # at most this many samples per benchmark (smoke runs), after sorting by id
    main_benchmarks: tuple[str, ...] = ()  # benchmarks every model runs on at its own K (Tables 1, 2, 4)
    efficiency: dict[str, Any] | None = None  # {seed, models, quotas}
    table4: dict[str, Any] | None = None  # {models}
    fig5: dict[str, Any] | None = None  # {model, k_values, benchmark}
    fig3: dict[str, Any] | None = None  # {models, benchmark, n_samples, layer}
    ablation: dict[str, Any] | None = None  # {model, kinds, noise_scale, benchmarks, seed}
    title: str = "MedLVR evaluation"
    sample_data: bool = False  # write the bundled sample benchmarks into data_root first (if not there)
    data_root: Path | None = None

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"model {name!r} is not among the configured models {[m.name for m in self.models]}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "EvalConfig":
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(data, base_dir=path.parent, **overrides)

    @classmethod
    def from_dict(cls, data: dict, base_dir: Path = Path("."), **overrides) -> "EvalConfig":
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        if not data.get("models"):
            raise ConfigError("config needs a non-empty `models` list")
        models = []
        for m in data["models"]:
            bad = set(m) - {f.name for f in fields(ModelSpec)}
            if bad or "name" not in m or "path" not in m:
                raise ConfigError(f"model entry {m} needs name and path; unknown keys {sorted(bad)}")
            spec = ModelSpec(**m)
            if spec.prompt_style not in PROMPT_STYLES:
                raise ConfigError(f"prompt_style must be one of {PROMPT_STYLES}: {m}")
            if not spec.path.startswith("tiny"):
                spec = replace(spec, path=str(_resolve(spec.path, base_dir)))
            models.append(spec)
        if len({m.name for m in models}) != len(models):
            raise ConfigError("model names must be unique")
        data_root = data.get("data_root")
        data_root = None if data_root is None else _resolve(data_root, base_dir)
        benches: dict[str, dict] = {}
        raw = data.get("benchmarks") or {}
        if isinstance(raw, list):
            raw = {b: {} for b in raw}
        for name, kw in raw.items():
            kw = dict(kw or {})
            if "path" not in kw:
                if data_root is None:
                    raise ConfigError(f"benchmark {name!r} has no path and the config has no data_root")
                kw["path"] = str(Path(data_root) / DATA_DIRS.get(name, name))
            kw["path"] = str(_resolve(kw["path"], base_dir))
            benches[name] = kw
        if not benches:
            raise ConfigError("config needs at least one benchmark")
        decode = DecodeSettings(**(data.get("decode") or {}))
        main = tuple(data.get("main_benchmarks") or benches)
        cfg = cls(
            out_dir=_resolve(data.get("out_dir", "eval_out"), base_dir),
            models=tuple(models),
            benchmarks=benches,
            decode=decode,
            limit=data.get("limit"),
            main_benchmarks=main,
            efficiency=data.get("efficiency"),
            table4=data.get("table4"),
            fig5=data.get("fig5"),
            fig3=data.get("fig3"),
            ablation=data.get("ablation"),
            title=data.get("title", "MedLVR evaluation"),
            sample_data=bool(data.get("sample_data", False)),
            data_root=data_root,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        names = {m.name for m in self.models}
        for section in ("efficiency", "table4", "fig3"):
            sec = getattr(self, section) or {}
            for n in sec.get("models", []):
                if n not in names:
                    raise ConfigError(f"{section}.models: unknown model {n!r}")
        for section in ("fig5", "ablation"):
            sec = getattr(self, section)
            if sec and sec.get("model") not in names:
                raise ConfigError(f"{section}.model: unknown model {sec.get('model')!r}")
        if self.ablation:
            bad = set(self.ablation.get("kinds", ABLATIONS)) - set(ABLATIONS)
            if bad:
                raise ConfigError(f"ablation.kinds: unknown {sorted(bad)}; known {ABLATIONS}")
        for b in self.main_benchmarks:
            if b not in self.benchmarks:
                raise ConfigError(f"main_benchmarks: {b!r} is not configured under benchmarks")


def _resolve(p: str | Path, base_dir: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else (Path(base_dir) / p).resolve()
