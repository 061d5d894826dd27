"""Loading configs: ``_BASE_`` inheritance, name resolution and strict checking.

``load_config("fpn_gn_long.yaml", ["SOLVER.BASE_LR", "0.01"])`` returns a frozen
CfgNode. A bare file name is looked up in the configs shipped inside the package
(``detgn/configs/``, recursively), so it works from any directory, from a clone or from
an installed wheel. Unknown keys and wrongly typed values are errors that name the key,
the file and what would be valid.
"""
from __future__ import annotations

import ast
import difflib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from .conventions import apply_convention
from .defaults import get_cfg
from .errors import ConfigError

BASE_KEY = "_BASE_"


def configs_root() -> Path:
    """The folder bare config names resolve against (``DETGN_CONFIGS`` overrides)."""
    env = os.environ.get("DETGN_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "configs"


def _all_config_files(root: Path) -> List[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def resolve_config_path(name: str) -> Path:
    """Turn a path or a bare name (``fpn_gn_long.yaml``, ``synthetic/demo``) into a file.

    An existing path (absolute or relative to the working directory) wins. Otherwise
    the name is matched against files under :func:`configs_root`, by relative path or
    by file name, with or without ``.yaml``.
    """
    p = Path(os.path.expanduser(name))
    if p.is_file():
        return p.resolve()
    root = configs_root()
    files = _all_config_files(root)
    wanted = name if name.endswith((".yaml", ".yml")) else name + ".yaml"
    rel = [f for f in files if f.relative_to(root).as_posix() == wanted]
    if len(rel) == 1:
        return rel[0]
    by_name = [f for f in files if f.name == Path(wanted).name and f.relative_to(root).as_posix().endswith(wanted)]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        listing = "\n  ".join(str(f.relative_to(root)) for f in by_name)
        raise ConfigError(
            f"Config name '{name}' is ambiguous in {root}; it matches:\n  {listing}\n"
            "Pass one of these relative paths instead."
        )
    names = [f.relative_to(root).as_posix() for f in files]
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.4)
    close += [n for n in difflib.get_close_matches(Path(wanted).name, [Path(n).name for n in names], n=5, cutoff=0.4)
              if n not in close]
    hint = ("Closest names: " + ", ".join(close)) if close else f"{len(names)} configs exist under {root}"
    raise ConfigError(f"No config file '{name}' (not a path, not found under {root}). {hint}")


def load_yaml_with_base(path: Path, _chain: Optional[List[Path]] = None) -> Dict[str, Any]:
    """Read a YAML file, merging the files named by ``_BASE_`` under it (recursively).

    ``_BASE_`` may be one path or a list, relative to the file that names it or a
    bare config name. Cycles are rejected with the chain that forms them.
    """
    path = Path(path).resolve()
    chain = list(_chain or [])
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + [path])
        raise ConfigError(f"_BASE_ cycle: {cycle}")
    chain.append(path)
    try:
        with open(path, "r") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return _annotate(data, path)
    if isinstance(bases, str):
        bases = [bases]
    merged: Dict[str, Any] = {}
    for b in bases:
        candidate = path.parent / b
        base_path = candidate if candidate.is_file() else resolve_config_path(b)
        _deep_merge(merged, load_yaml_with_base(base_path, chain))
    _deep_merge(merged, _annotate(data, path))
    return merged


class _Sourced:
    """A YAML value remembered with the file it came from (for error messages)."""

    __slots__ = ("value", "source")

    def __init__(self, value, source):
        self.value, self.source = value, source


def _annotate(d: Dict[str, Any], source: Path) -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        out[k] = _annotate(v, source) if isinstance(v, dict) else _Sourced(v, source)
    return out


def _deep_merge(dst: Dict[str, Any], src: Dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def _all_keys(node: CN, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CN):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _unknown_key_error(full_key: str, cfg: CN, source: str) -> ConfigError:
    keys = _all_keys(cfg)
    close = difflib.get_close_matches(full_key, keys, n=3, cutoff=0.5)
    last = full_key.split(".")[-1]
    close += [k for k in keys if k.split(".")[-1] == last and k not in close][:3]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown config key '{full_key}' (in {source}).{hint}")


# Keys whose value is a choice that also accepts a boolean (the key's earlier type).
_BOOL_OR_CHOICE = ("CPU.BF16",)


def _check_type(full_key: str, old: Any, new: Any, source: str) -> Any:
    """Return ``new`` converted to the default's type, or raise a typed error."""
    if old is None or new is None:
        return new
    if full_key in _BOOL_OR_CHOICE:  # e.g. CPU.BF16: auto / on / off, and True / False
        from detgn.utils.cpu import normalize_bf16_setting

        try:
            return normalize_bf16_setting(new)
        except ValueError as e:
            raise ConfigError(f"Config key '{full_key}' (in {source}): {e}") from None
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    elif isinstance(old, int) and isinstance(new, int):
        return new
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return type(old)(new)
    elif isinstance(old, str) and isinstance(new, str):
        return new
    raise ConfigError(
        f"Config key '{full_key}' (in {source}) expects {type(old).__name__} "
        f"(default {old!r}), got {type(new).__name__} {new!r}"
    )


def _merge_into(cfg: CN, data: Dict[str, Any], root: CN, prefix: str = "") -> None:
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in cfg:
            source = v.source if isinstance(v, _Sourced) else _first_source(v)
            raise _unknown_key_error(full, root, str(source))
        if isinstance(v, dict):
            if not isinstance(cfg[k], CN):
                raise ConfigError(
                    f"Config key '{full}' (in {_first_source(v)}) is a value, not a section"
                )
            _merge_into(cfg[k], v, root, full + ".")
        else:
            if isinstance(cfg[k], CN):
                raise ConfigError(f"Config key '{full}' (in {v.source}) is a section; set its keys")
            value = v.value
            if isinstance(value, str) and cfg[k] is not None and not isinstance(cfg[k], str):
                value = _decode_value(value)  # e.g. ("coco_2017_train",) written in YAML
            cfg[k] = _check_type(full, cfg[k], value, str(v.source))


def _first_source(d: Dict[str, Any]) -> str:
    for v in d.values():
        if isinstance(v, _Sourced):
            return str(v.source)
        if isinstance(v, dict):
            return _first_source(v)
    return "?"


def _flat_sources(d: Dict[str, Any], prefix: str = "") -> Dict[str, Path]:
    """Full key name -> the file that set it, for a dict from :func:`load_yaml_with_base`."""
    out: Dict[str, Path] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_sources(v, f"{prefix}{k}."))
        elif isinstance(v, _Sourced):
            out[f"{prefix}{k}"] = Path(v.source)
    return out


def _ancestors(path: Path) -> List[Path]:
    """Every file in ``path``'s ``_BASE_`` chain (not ``path`` itself)."""
    try:
        with open(path, "r") as f:
            bases = (yaml.safe_load(f) or {}).get(BASE_KEY) or []
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    out = []
    for b in [bases] if isinstance(bases, str) else bases:
        candidate = path.parent / b
        base = (candidate if candidate.is_file() else resolve_config_path(b)).resolve()
        out += [base] + _ancestors(base)
    return out


def _keys_after_convention(sources: Dict[str, Path], opts_keys: List[str]) -> List[str]:
    """Keys set at or after the point where MODEL.CONVENTION is set: on the command line,
    in the same file, or in a file that inherits from that file. They keep their values;
    keys from that file's bases take the convention's (it acts as a block of keys there)."""
    if "MODEL.CONVENTION" in opts_keys or "MODEL.CONVENTION" not in sources:
        return list(opts_keys)
    conv_file = sources["MODEL.CONVENTION"]
    after = [k for k, src in sources.items() if src == conv_file or conv_file in _ancestors(src)]
    return after + list(opts_keys)


def merge_from_file(cfg: CN, path) -> CN:
    """Merge a YAML file (with its ``_BASE_`` chain) into ``cfg`` with strict checks."""
    data = load_yaml_with_base(Path(path))
    _merge_into(cfg, data, cfg)
    return cfg


def _decode_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict,)) else value


def merge_from_list(cfg: CN, opts: Sequence[str]) -> CN:
    """Apply ``KEY VALUE`` pairs from the command line."""
    if len(opts) % 2 != 0:
        raise ConfigError(f"Overrides must be KEY VALUE pairs, got an odd count: {list(opts)}")
    for key, text in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = key.split(".")
        for i, p in enumerate(parts):
            if not isinstance(node, CN) or p not in node:
                raise _unknown_key_error(key, cfg, "command-line overrides")
            if i < len(parts) - 1:
                node = node[p]
        if isinstance(node[parts[-1]], CN):
            raise ConfigError(f"Config key '{key}' (in command-line overrides) is a section; set its keys")
        value = _decode_value(text)
        if isinstance(node[parts[-1]], str) and not isinstance(value, str):
            value = text  # "KEY 123" for a string key means the string "123"
        node[parts[-1]] = _check_type(key, node[parts[-1]], value, "command-line overrides")
    return cfg


def validate_config(cfg: CN) -> None:
    """Checks across keys that a single type check cannot express."""
    gn = cfg.MODEL.GROUP_NORM
    if (gn.NUM_GROUPS > 0) == (gn.DIM_PER_GP > 0):
        raise ConfigError(
            "Exactly one of MODEL.GROUP_NORM.NUM_GROUPS and MODEL.GROUP_NORM.DIM_PER_GP must be > 0 "
            f"(got {gn.NUM_GROUPS} and {gn.DIM_PER_GP}); set the other to -1"
        )
    norms = {"", "FrozenBN", "GN", "LN", "IN", "BN", "SyncBN"}
    for key in ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"):
        node = cfg
        for p in key.split("."):
            node = node[p]
        if node not in norms:
            raise ConfigError(f"{key} = {node!r}; choose one of {sorted(norms)}")
    if cfg.DATASETS.ON_BAD_ANNOTATION not in ("drop_degenerate", "error", "skip"):
        raise ConfigError(
            f"DATASETS.ON_BAD_ANNOTATION must be 'drop_degenerate' (default), 'error' or 'skip', "
            f"got {cfg.DATASETS.ON_BAD_ANNOTATION!r}"
        )
    if cfg.INPUT.RESIZE_TEST not in ("opencv", "torchvision"):
        raise ConfigError(f"INPUT.RESIZE_TEST must be 'opencv' or 'torchvision', got {cfg.INPUT.RESIZE_TEST!r}")
    if cfg.SOLVER.ON_SCHEDULE_CHANGE not in ("apply", "refuse"):
        raise ConfigError("SOLVER.ON_SCHEDULE_CHANGE must be 'apply' or 'refuse'")
    if cfg.SOLVER.IMS_PER_GPU < 1:
        raise ConfigError("SOLVER.IMS_PER_GPU must be >= 1")
    if cfg.SOLVER.GRAD_ACCUM_STEPS < 1:
        raise ConfigError(f"SOLVER.GRAD_ACCUM_STEPS must be >= 1 (1: no gradient accumulation), got {cfg.SOLVER.GRAD_ACCUM_STEPS}")


def load_config(name: Optional[str] = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Defaults, then the config file (resolved by name), then ``KEY VALUE`` overrides."""
    cfg = get_cfg()
    sources: Dict[str, Path] = {}
    if name:
        data = load_yaml_with_base(resolve_config_path(name))
        sources = _flat_sources(data)
        _merge_into(cfg, data, cfg)
    merge_from_list(cfg, list(opts))
    apply_convention(cfg, _keys_after_convention(sources, [str(k) for k in list(opts)[0::2]]))
    validate_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def parse_args_with_overrides(parser, argv=None):
    """``parser.parse_known_args`` plus the config's ``KEY VALUE`` overrides (``args.opts``), wherever
    they stand on the line; an unknown ``--option`` is a usage error (exit 2)."""
    args, rest = parser.parse_known_args(argv)
    unknown = [r for r in rest if r.startswith("--")]
    if unknown:
        parser.error(f"unrecognized option(s): {' '.join(unknown)} (config overrides are KEY VALUE pairs)")
    args.opts = rest
    return args
