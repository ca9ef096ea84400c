"""One configuration loader for every recipe: typed dataclasses filled from a YAML file plus dotted overrides.

    cfg = load_config(SFTConfig, "configs/sft_tiny.yaml", ["engine.lr=1e-5", "run.out_dir=/tmp/x"])

Rules, the same for the corpus build, ROI-SFT, VLPO and evaluation:

* The YAML file is a mapping; `--set a.b.c=VALUE` overrides one key after the file is read (VALUE parsed as YAML,
  so `--set engine.lr=1e-5`, `--set data.modalities=[CT,MRI]` and `--set model.path=null` work).
* Unknown keys are errors, everywhere and at any depth, with the nearest known key suggested. A key that a config
  class lists in its `RENAMED_KEYS` ClassVar ({old: (new, how old values map)}) names its new spelling instead.
* Values are checked against the field types (`int`, `float`, `bool`, `str`, `Path`, `X | None`, `tuple[X, ...]`,
  `list[X]`, `dict[str, X]`, `Literal[...]`, nested dataclasses). A float field takes an int or a numeric string
  (YAML 1.1 reads `1e-5` as a string); nothing else is coerced.
* Relative paths (fields typed `Path`) resolve against the working directory of the command, once, at load time:
  the loaded config holds absolute paths, so a subprocess started elsewhere sees the same files.
* Every error is a `ConfigError` with a one-line message that names the key (`engine.lrr`), fit for a CLI to print
  as is and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be loaded: the message is one line and names the key."""


def add_config_arguments(p: argparse.ArgumentParser, examples: str, override_example: str,
                         required: bool = True) -> None:
    """`--config FILE` and repeatable `--set KEY=VALUE` (dotted keys; values parsed as YAML)."""
    p.add_argument("--config", required=required, help=f"YAML config ({examples})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {override_example} (repeatable; values parsed as YAML)")


def exit_on_config_error(prog: str, fn: Callable[..., int], *args: Any) -> int:
    """`fn(*args)`, with a ConfigError printed as ONE line (`prog: error: ...`, no traceback) and exit status 2,
    as the root CLI does: for the entry points a launcher runs as a subprocess (`python -m ...`, torchrun)."""
    try:
        return fn(*args)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2


def read_yaml(path: str | Path) -> dict:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    """A deep copy of `data` with each `a.b.c=VALUE` set (VALUE parsed as YAML)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override must look like section.key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. an unbalanced bracket in a path): take the text as given
        node = out
        *parents, last = key.split(".")
        for i, part in enumerate(parents):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key}: {'.'.join(parents[:i + 1])} is a value, not a section")
            node = nxt
        node[last] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """`cls` from the YAML file at `path` (optional) and dotted `overrides`."""
    data = read_yaml(path) if path else {}
    return build_config(cls, apply_overrides(data, overrides))


def build_config(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """`cls` (a dataclass) from a plain mapping, with the checks of this module's docstring."""
    return _build(cls, {} if data is None else data, where)


def did_you_mean(word: Any, known: Sequence[str] | Mapping[str, Any], where: str = "") -> str:
    """" (did you mean X?)" for the nearest known name, else " (known: a, b, ...)": the hint every unknown name
    gets (a config key, a subcommand, a dataset id, a catalog or adapter option)."""
    names = [str(k) for k in known]
    close = difflib.get_close_matches(str(word), names, n=1)
    return f" (did you mean {_join(where, close[0])}?)" if close else f" (known: {', '.join(sorted(names))})"


def signature_config(fn: Callable, skip: int = 1) -> type:
    """A config dataclass of `fn`'s parameters after the first `skip` (their annotations and defaults), so the
    keyword arguments a config passes to a function (a benchmark loader's `split`, ...) go through this loader:
    an unknown one is a `ConfigError` with a did-you-mean, a value of the wrong type too."""
    import inspect

    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[skip:]
    fields = [(p.name, hints.get(p.name, Any), dataclasses.field(default=p.default))
              if p.default is not inspect.Parameter.empty else (p.name, hints.get(p.name, Any))
              for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    fields.sort(key=lambda f: len(f) == 3)  # required ones first, as a dataclass needs
    return dataclasses.make_dataclass(f"{getattr(fn, '__name__', 'call')}_arguments", fields, frozen=True)


def config_to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-safe mapping of a config (tuples as lists, paths as strings); `build_config` of it gives
    the same config back."""
    return _plain(dataclasses.asdict(cfg))


# ---------------------------------------------------------------------------------------------------------------


def _build(cls, data, where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    renamed = getattr(cls, "RENAMED_KEYS", {})  # ClassVar {old key: (new key, how old values map)}
    for key in data:
        if key not in fields and key in renamed:
            new, how = renamed[key]
            raise ConfigError(f"config key {_join(where, key)} is renamed to {_join(where, new)}"
                              + (f" ({how})" if how else ""))
        if key not in fields:
            raise ConfigError(f"unknown config key {_join(where, key)}{did_you_mean(key, fields, where)}")
    kwargs = {k: _value(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a __post_init__ check: keep its message, say where
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{where}: {msg}" if where else msg) from None


def _value(tp, v, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return v
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if v is None else v, where)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return _value(a, v, where)
            except ConfigError as e:
                errors.append(e)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(v)}")
    if origin is typing.Literal:
        if v not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {_show(v)}")
        return v
    if origin in (tuple, list, Sequence):
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(v)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(v) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(v)}")
            return tuple(_value(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
        item = args[0] if args else Any
        out = [_value(item, x, f"{where}[{i}]") for i, x in enumerate(v)]
        return out if origin is list else tuple(out)
    if origin in (dict, Mapping):
        if not isinstance(v, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(v)}")
        kt, vt = args if args else (Any, Any)
        return {_value(kt, k, f"{where}.{k}"): _value(vt, x, f"{where}.{k}") for k, x in v.items()}
    if tp is Path:
        if not isinstance(v, (str, Path)) or not str(v):
            raise ConfigError(f"{where}: expected a path, got {_show(v)}")
        return Path(v).expanduser().absolute()
    if tp is float:
        if isinstance(v, bool):
            raise ConfigError(f"{where}: expected a number, got {_show(v)}")
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {_show(v)}")
    if tp in (int, bool, str):
        if type(v) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {_show(v)}")
        return v
    return v  # a type this loader does not check (a callable, a custom class): the recipe checks it


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def _show(v) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _deep_copy(d):
    if isinstance(d, Mapping):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _plain(v):
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v
