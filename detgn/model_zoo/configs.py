"""Configs and models by zoo name: ``get_config("fpn_gn_long.yaml")``, ``get(..., trained=True)``.

Also importable from the zoo itself, as in detectron2: ``from detgn import model_zoo;
model_zoo.get_config("fpn_gn_long.yaml")`` (:mod:`detgn.model_zoo` loads this module on first use).

The zoo's one module above the rest of detgn: the catalog and verified downloads of
:mod:`detgn.model_zoo` with the configs (:mod:`detgn.config`) and model building
(:mod:`detgn.engine.predictor`). The other zoo modules depend on none of these, and
``import detgn.model_zoo`` does not import this one.

A config name is a file under the shipped configs, ``detgn/configs/`` (``fpn_gn_long.yaml``,
``synthetic/demo``), or the zoo name of its trained weights (``detgn://fpn_gn_long/model_final``); the
two are tied by the convention ``<config name without .yaml>/model_final``.
"""
from __future__ import annotations

from typing import List, Sequence

from detgn.config import configs_root, load_config, resolve_config_path
from detgn.engine.predictor import build_and_load_model
from .catalog import MODEL_ZOO, ZOO_PREFIX, canonical_name, list_models

__all__ = ["get", "get_config", "get_config_file", "trained_weights_name"]

_TRAINED_SUFFIX = "/model_final"


def _config_name(name: str) -> str:
    """``detgn://fpn_gn_long/model_final`` / ``fpn_gn_long.yaml`` -> ``fpn_gn_long``."""
    key = canonical_name(name)
    if key.endswith(_TRAINED_SUFFIX):
        key = key[: -len(_TRAINED_SUFFIX)]
    for ext in (".yaml", ".yml"):
        if key.endswith(ext):
            key = key[: -len(ext)]
    if not key:
        raise ValueError(f"Empty config name {name!r}; pass e.g. 'fpn_gn_long.yaml'")
    return key


def _weights_candidates(config_name: str) -> List[str]:
    """Catalog keys that may hold a config's trained weights, most specific first.

    The name as given, the file's path under ``configs/`` and its bare stem, so
    ``fpn_gn_long`` and ``gn_paper/fpn_gn_long`` find the same entry.
    """
    names = [config_name]
    try:
        path = resolve_config_path(config_name + ".yaml").resolve()
        rel = path.relative_to(configs_root().resolve()).with_suffix("").as_posix()
        names += [rel, path.stem]
    except (ValueError, OSError):  # not under configs/ (an explicit path): keep the name
        pass
    out: List[str] = []
    for n in names:
        key = n + _TRAINED_SUFFIX
        if key not in out:
            out.append(key)
    return out


def trained_weights_name(config_name: str) -> str:
    """The zoo name of a config's trained weights, e.g. ``detgn://fpn_gn_long/model_final``.

    Raises ValueError, listing what is published, if the catalog has none.
    """
    name = _config_name(config_name)
    candidates = _weights_candidates(name)
    for key in candidates:
        if key in MODEL_ZOO:
            return ZOO_PREFIX + key
    published = [n for n in list_models() if n.endswith(_TRAINED_SUFFIX)]
    raise ValueError(
        f"No trained weights for config '{name}' in the model zoo (looked for "
        f"{', '.join(ZOO_PREFIX + c for c in candidates)}). Trained weights are listed in MODEL_ZOO.md "
        f"as they are published; available: {', '.join(published) or 'none yet'}. "
        "Use trained=False to start from the config's own MODEL.WEIGHTS."
    )


def get_config_file(name: str) -> str:
    """The path of a zoo config's YAML file inside the installed package.

    Args:
        name: ``"fpn_gn_long.yaml"``, ``"gn_paper/fpn_gn_long"`` or
            ``"detgn://fpn_gn_long/model_final"``.

    Returns:
        The absolute path of the file (under :func:`detgn.config.configs_root`).
    """
    return str(resolve_config_path(_config_name(name) + ".yaml"))


def get_config(name: str, trained: bool = False, opts: Sequence[str] = ()):
    """The (frozen) config of a zoo config name, loaded with ``detgn.config.load_config``.

    Args:
        name: ``"fpn_gn_long.yaml"``, ``"fpn_gn_long"`` or ``"detgn://fpn_gn_long/model_final"``.
        trained: set ``MODEL.WEIGHTS`` to the zoo name of the config's trained weights
            (an error if none are published yet); otherwise keep the config's own
            ``MODEL.WEIGHTS`` (typically an ImageNet backbone).
        opts: extra ``KEY VALUE`` overrides, applied last.
    """
    config_name = _config_name(name)
    overrides: List[str] = []
    if trained:
        overrides = ["MODEL.WEIGHTS", trained_weights_name(config_name)]
    return load_config(config_name + ".yaml", overrides + list(opts))


def get(name: str, trained: bool = False, device: str = "cpu"):
    """A model for a zoo config name: built and with ``MODEL.WEIGHTS`` loaded
    (:func:`detgn.engine.predictor.build_and_load_model`).

    Args:
        name: as for :func:`get_config`.
        trained: load the config's trained zoo weights; otherwise the config's own
            ``MODEL.WEIGHTS`` (nothing is loaded when that is empty: random init).
        device: ``"cpu"``, ``"cuda"``, ...; also written to ``MODEL.DEVICE``.

    Returns:
        The ``nn.Module`` (in training mode, as built; call ``.eval()`` for inference, or
        use :class:`detgn.engine.Predictor` with :func:`get_config`).
    """
    cfg = get_config(name, trained=trained, opts=["MODEL.DEVICE", device])
    model, _ = build_and_load_model(cfg)
    return model
