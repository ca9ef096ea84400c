"""The `medlvr evaluate --config FILE [--set key=value ...]` configuration (YAML), as typed dataclasses filled by the
project's one loader (`medlvr.corpus.config`: unknown keys are errors, relative paths resolve against the working
directory, like every other recipe).

Every section but `models` and `benchmarks` is optional; a missing section switches that table / figure off.
A model is `path: tiny` (+ `tiny_seed`) or a checkpoint directory; its K (`k_latent`) is read from the checkpoint
(`model/medlvr_latent.json`, written by ROI-SFT and VLPO) unless the entry sets it. See `configs/eval_sample.yaml`.
Or a model is an OpenAI-compatible chat endpoint (`endpoint: {base_url, model, api_key_env, max_concurrency,
timeout_s, max_retries, ...}`, `medlvr.corpus.chat_endpoint.EndpointSettings`): a baseline served by vLLM / SGLang
or a hosted API, asked the same prompts, scored by the same parser, in the same tables (K = 0: plain decoding on
the server). See `configs/eval_endpoint.yaml`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlvr.corpus.chat_endpoint import EndpointSettings
from medlvr.corpus.config import (ConfigError, apply_overrides, build_config, did_you_mean, read_yaml,
                                  signature_config)
from medlvr.evaluation.protocols import get_protocol
from medlvr.training.checkpoints import TINY, read_latent_info, resolve_model_path

__all__ = ["ConfigError", "DecodeSettings", "EvalConfig", "ModelSpec", "load_eval_config", "resolve_k_latents"]

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
PROMPT_STYLES = ("direct", "tags", "medevalkit")
ABLATIONS = ("zero", "shuffle", "noise")



@dataclass(frozen=True)
class ModelSpec:
    name: str  # label in tables and prediction files
    path: str = ""  # "tiny" (offline random tiny model), a checkpoint dir of ours, or a base Qwen2.5-VL dir
    tiny_seed: int = 0  # seed of the tiny model (path: tiny)
    k_latent: int | None = None  # latent budget K; None: the checkpoint's; 0 = plain decoding (the base model)
    prompt_style: str = "tags"  # "tags": <answer> tags (reasoning model); "direct": standard direct-answer prompt
    variant: str = ""  # training variant label for Table 4 (default: the name)
    endpoint: EndpointSettings | None = None  # an OpenAI-compatible chat endpoint instead of local weights

    def __post_init__(self):
        if self.endpoint is not None:
            if self.path:
                raise ValueError("give either path (local weights) or endpoint (a served model), not both")
            if self.k_latent:
                raise ValueError("an endpoint model decodes plainly on its server: k_latent must be 0 or unset")
            object.__setattr__(self, "k_latent", 0)
        else:
            object.__setattr__(self, "path", resolve_model_path(self.path))
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.k_latent is not None and self.k_latent < 0:
            raise ValueError(f"k_latent must be >= 0, got {self.k_latent}")

    @property
    def label(self) -> str:
        return self.variant or self.name

    @property
    def source(self) -> str:
        """Where the model comes from, for tables: the checkpoint path, or the endpoint's model @ base_url."""
        return f"{self.endpoint.model} @ {self.endpoint.base_url}" if self.endpoint else self.path


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
    # `closed` inference (visual bottleneck, training/bottleneck.py): <Medlvr_End> and the answer may not attend
    # to the visual tokens, so a latent model's answer sees the image only through its latents. K = 0: no effect
    closed: bool = False


# The optional sections' keys, typed: a section is checked against its dataclass by the one loader (an unknown
# key is an error with a did-you-mean) and kept as the mapping the config gave, which the tables and figures read
# with these defaults.
@dataclass(frozen=True)
class EfficiencySection:  # Table 3: the efficiency subset
    seed: int = 0
    models: tuple[str, ...] | None = None  # default: every model
    quotas: dict[str, int] | None = None  # benchmark -> items; default: the registry's quotas


@dataclass(frozen=True)
class Table4Section:
    models: tuple[str, ...] | None = None  # default: every model
    benchmarks: tuple[str, ...] | None = None  # default: main_benchmarks


@dataclass(frozen=True)
class Fig5Section:  # accuracy vs K
    model: str | None = None  # required
    k_values: tuple[int, ...] = (2, 4, 8, 14, 16)
    benchmark: str = "omnimedvqa"


@dataclass(frozen=True)
class Fig3Section:  # attention on visual tokens
    models: tuple[str, ...] | None = None  # default: every model
    benchmark: str | None = None  # default: the first configured benchmark
    n_samples: int = 4
    max_new_tokens: int = 32


@dataclass(frozen=True)
class AblationSection:  # latent ablations at inference
    model: str | None = None  # required
    kinds: tuple[str, ...] = ABLATIONS
    noise_scale: float = 1.0
    benchmarks: tuple[str, ...] | None = None  # default: main_benchmarks
    seed: int = 0


@dataclass(frozen=True)
class LatentDiagnosticsSection:
    models: tuple[str, ...] | None = None  # default: every latent model
    benchmarks: tuple[str, ...] | None = None  # default: main_benchmarks
    limit: int | None = None
    k_values: tuple[int, ...] = ()
    probe_fraction: float = 0.5
    seed: int = 0


SECTIONS = {"efficiency": EfficiencySection, "table4": Table4Section, "fig5": Fig5Section, "fig3": Fig3Section,
            "ablation": AblationSection, "latent_diagnostics": LatentDiagnosticsSection}


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[ModelSpec, ...] = ()
    # name -> loader keyword arguments (+ `path`; default <data_root>/<DATA_DIRS name>); empty: all registered
    benchmarks: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    out_dir: Path = Path("eval_out")
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    limit: int | None = None  # at most this many samples per benchmark (smoke runs), after sorting by id
    main_benchmarks: tuple[str, ...] = ()  # benchmarks every model runs on at its own K (Tables 1, 2, 4); (): all
    efficiency: dict[str, Any] | None = None  # {seed, models, quotas}
    table4: dict[str, Any] | None = None  # {models}
    fig5: dict[str, Any] | None = None  # {model, k_values, benchmark}
    fig3: dict[str, Any] | None = None  # {models, benchmark, n_samples, max_new_tokens}
    ablation: dict[str, Any] | None = None  # {model, kinds, noise_scale, benchmarks, seed}
    # causal latent diagnostics (evaluation/latent_diagnostics.py) for every latent model (or `models`):
    # {models, benchmarks (default: main), limit, k_values, probe_fraction, seed}
    latent_diagnostics: dict[str, Any] | None = None
    # scoring protocol (medlvr.evaluation.protocols): medlvr | medevalkit | paper; named in every table caption
    protocol: str = "medlvr"
    title: str = "MedLVR evaluation"
    note: str = ""  # one line under the title: what the evaluated models are (and are not)
    sample_data: bool = False  # write the bundled sample benchmarks into data_root first (if not there)
    data_root: Path | None = None

    def __post_init__(self):
        for section, cls in SECTIONS.items():  # typed through the one loader (keys and values)
            if getattr(self, section) is not None:
                build_config(cls, getattr(self, section), section)
        if not self.models:
            raise ValueError("models: the config needs a non-empty `models` list")
        if len({m.name for m in self.models}) != len(self.models):
            raise ValueError("models: model names must be unique")
        benches: dict[str, dict] = {}
        # no `benchmarks` section: every registered benchmark under data_root (a new benchmark module needs no edit
        # of the sample configs to be evaluated)
        registered = all_benchmarks()
        for name, kw in (self.benchmarks or dict.fromkeys(BENCHMARKS)).items():
            if name not in registered:
                raise ConfigError(f"unknown config key benchmarks.{name}{did_you_mean(name, registered, 'benchmarks')}")
            kw = dict(kw or {})
            # the loader's own keyword arguments (`split`, `source`, ...), typed from its signature
            args = build_config(signature_config(registered[name].loader), {k: v for k, v in kw.items() if k != "path"},
                                f"benchmarks.{name}")
            kw.update({k: getattr(args, k) for k in kw if k != "path"})
            if "path" not in kw:
                if self.data_root is None:
                    raise ValueError(f"benchmarks.{name}: no path and the config has no data_root")
                kw["path"] = Path(self.data_root) / DATA_DIRS.get(name, name)
            kw["path"] = str(Path(kw["path"]).expanduser().absolute())
            benches[name] = kw
        if not benches:
            raise ValueError("benchmarks: the config needs at least one benchmark")
        protocol = get_protocol(self.protocol)
        for name, kw in benches.items():  # the protocol's splits, and the split arguments it needs from the config
            for key, value in protocol.loader_kwargs.get(name, {}).items():
                if key in kw and kw[key] != value:
                    raise ValueError(f"benchmarks.{name}.{key}: protocol {self.protocol} scores {key} {value!r}, "
                                     f"not {kw[key]!r}")
                kw[key] = value
            for key in protocol.required.get(name, ()):
                if key not in kw:
                    raise ValueError(f"benchmarks.{name}.{key} is required by protocol {self.protocol} "
                                     f"({protocol.description})")
        if protocol.prompt_style:  # every model asked the protocol's way
            object.__setattr__(self, "models", tuple(dataclasses.replace(m, prompt_style=protocol.prompt_style)
                                                     for m in self.models))
        object.__setattr__(self, "benchmarks", benches)
        object.__setattr__(self, "main_benchmarks", tuple(self.main_benchmarks or benches))
        self.validate()

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"model {name!r} is not among the configured models {[m.name for m in self.models]}")

    def validate(self) -> None:
        names = {m.name for m in self.models}
        for section in ("efficiency", "table4", "fig3"):
            sec = getattr(self, section) or {}
            for n in sec.get("models", []):
                if n not in names:
                    raise ConfigError(f"{section}.models: unknown model {n!r}")
        if self.latent_diagnostics is not None:
            sec = self.latent_diagnostics
            for n in sec.get("models") or []:
                if n not in names:
                    raise ConfigError(f"latent_diagnostics.models: unknown model {n!r}")
            for b in sec.get("benchmarks") or []:
                if b not in self.benchmarks:
                    raise ConfigError(f"latent_diagnostics.benchmarks: {b!r} is not configured under benchmarks")
        for section in ("fig5", "ablation"):
            sec = getattr(self, section)
            if sec and sec.get("model") not in names:
                raise ConfigError(f"{section}.model: unknown model {sec.get('model')!r}")
        # these need the model's weights (latent states, attention maps): an endpoint has none to give
        served = {m.name for m in self.models if m.endpoint is not None}
        for section, key in (("fig5", "model"), ("ablation", "model"), ("fig3", "models")):
            sec = getattr(self, section)
            if not sec:
                continue
            chosen = sec.get(key, [m.name for m in self.models] if key == "models" else None)
            for n in [chosen] if isinstance(chosen, str) else chosen or []:
                if n in served:
                    raise ConfigError(f"{section}.{key}: {n!r} is an endpoint model; {section} needs local weights")
        if self.ablation:
            bad = set(self.ablation.get("kinds", ABLATIONS)) - set(ABLATIONS)
            if bad:
                raise ConfigError(f"ablation.kinds: unknown {sorted(bad)}; known {ABLATIONS}")
        for b in self.main_benchmarks:
            if b not in self.benchmarks:
                raise ConfigError(f"main_benchmarks: {b!r} is not configured under benchmarks")


def load_eval_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                     model_paths: Mapping[str, str] | None = None) -> EvalConfig:
    """YAML file (optional) + dotted overrides (`out_dir=...`, `decode.batch_size=4`) -> EvalConfig, with every
    model's K resolved. `model_paths` (model name -> checkpoint dir) points configured models at other weights
    (the Dagster assets pass the checkpoints the training assets wrote)."""
    data = apply_overrides(read_yaml(path) if path else {}, overrides)
    if model_paths:
        models = data.get("models") or []
        known = {m.get("name") for m in models if isinstance(m, Mapping)}
        unknown = sorted(set(model_paths) - known)
        if unknown:
            raise ConfigError(f"model_paths: unknown model {unknown[0]!r} (configured: {sorted(map(str, known))})")
        data["models"] = [{**m, "path": model_paths[m["name"]]} if m.get("name") in model_paths else m
                          for m in models]
    return resolve_k_latents(build_config(EvalConfig, data))


def resolve_k_latents(cfg: EvalConfig) -> EvalConfig:
    """`cfg` with every unset `k_latent` read from the model's checkpoint (medlvr_latent.json)."""
    models = []
    for i, m in enumerate(cfg.models):
        if m.k_latent is None:
            if m.path == TINY:
                raise ConfigError(f"models[{i}].k_latent is required for path: tiny (no checkpoint to read K from)")
            info = read_latent_info(m.path)
            if info is None:
                raise ConfigError(f"models[{i}].k_latent is not set and {m.path} records no K (medlvr_latent.json):"
                                  " set k_latent (0 for a base model)")
            m = dataclasses.replace(m, k_latent=info["k_latent"])
        models.append(m)
    return dataclasses.replace(cfg, models=tuple(models))
