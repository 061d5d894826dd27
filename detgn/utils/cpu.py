"""Whether to run under bfloat16 autocast on the CPU (``CPU.BF16``: auto | on | off).

One decision serves training (the trainer's autocast) and inference (``GeneralizedRCNN``'s
forward, so ``Predictor``, evaluation and the benchmark): ``auto`` turns bf16 on exactly
when the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16), where it measured 1.3-2x
faster; without them bf16 is emulated and slower than fp32 (measured on an AVX2-only EPYC),
so ``auto`` keeps fp32 there, and where ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` cap
the kernels below bf16 (an AVX2-only CPU emulated on a newer one). ``on`` / ``off`` force the choice. The choice and its reason
are logged once per process.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import torch

logger = logging.getLogger(__name__)

__all__ = ["BF16_SETTINGS", "Bf16Choice", "cpu_bf16_support", "normalize_bf16_setting", "resolve_bf16",
           "bf16_autocast"]

BF16_SETTINGS = ("auto", "on", "off")
_TRUE, _FALSE = ("on", "true", "1", "yes"), ("off", "false", "0", "no")


@dataclass(frozen=True)
class Bf16Choice:
    enabled: bool
    reason: str

    def __str__(self) -> str:
        return f"bf16 autocast {'on' if self.enabled else 'off'} ({self.reason})"


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # noqa: BLE001 - a probe that fails means "not known to be there"
        return False


@lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA), in increasing order, and the first that
# computes bf16 natively (AVX512_CORE_BF16) and the first with AMX.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16")
_BF16_ISA, _AMX_ISA = _ONEDNN_ISAS.index("AVX512_CORE_BF16"), _ONEDNN_ISAS.index("AVX512_CORE_AMX")


def isa_caps() -> Tuple[Optional[int], str]:
    """The instruction-set cap set in the environment: (rank in ``_ONEDNN_ISAS`` or None, a description).

    ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) caps oneDNN's convolutions and
    ``ATEN_CPU_CAPABILITY`` torch's own kernels; ``default`` or ``avx2`` there has no bf16 kernels.
    """
    import os

    rank, said = None, []
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip().upper()
        if value and value not in ("ALL", "DEFAULT"):
            said.append(f"{var}={value}")
            if value in _ONEDNN_ISAS:
                rank = _ONEDNN_ISAS.index(value) if rank is None else min(rank, _ONEDNN_ISAS.index(value))
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in ("default", "avx2"):
        said.append(f"ATEN_CPU_CAPABILITY={aten}")
        rank = min(rank, _ONEDNN_ISAS.index("AVX2")) if rank is not None else _ONEDNN_ISAS.index("AVX2")
    return rank, ", ".join(said)


def cpu_bf16_support() -> Tuple[bool, str]:
    """(native bf16 available, which instructions): torch's own probes, else /proc/cpuinfo, within
    the instruction-set caps of the environment (:func:`isa_caps`)."""
    flags = _cpuinfo_flags()
    cap, said = isa_caps()
    found = []
    if (_probe("_is_amx_tile_supported") or "amx_bf16" in flags) and (cap is None or cap >= _AMX_ISA):
        found.append("AMX-BF16")
    if (_probe("_is_avx512_bf16_supported") or "avx512_bf16" in flags) and (cap is None or cap >= _BF16_ISA):
        found.append("AVX512-BF16")
    if found:
        return True, "/".join(found)
    return False, "no AMX-BF16 or AVX512-BF16" + (f" within {said}" if said else "")


def normalize_bf16_setting(value) -> str:
    """``CPU.BF16`` as one of auto / on / off (True / False and their spellings accepted)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in _TRUE:
        return "on"
    if text in _FALSE:
        return "off"
    from detgn.config.errors import ConfigError

    raise ConfigError(f"CPU.BF16 must be one of {BF16_SETTINGS} (or True / False), got {value!r}")


def resolve_bf16(setting, device_type: str = "cpu") -> Bf16Choice:
    """The bf16 decision for a model on ``device_type`` (see the module docstring)."""
    setting = normalize_bf16_setting(setting)
    if str(device_type).split(":")[0] != "cpu":
        return Bf16Choice(False, f"CPU.BF16 applies to the CPU; the model is on {device_type} "
                                 "(use SOLVER.AMP.ENABLED there)")
    native, what = cpu_bf16_support()
    if setting == "off":
        return Bf16Choice(False, "CPU.BF16 off")
    if setting == "on":
        return Bf16Choice(True, f"CPU.BF16 on; this CPU has {what}" + ("" if native else
                                                                         ", so bf16 is emulated and slower"))
    if native:
        return Bf16Choice(True, f"CPU.BF16 auto: this CPU has {what}; CPU.BF16 off for fp32")
    return Bf16Choice(False, f"CPU.BF16 auto: this CPU has {what} (emulated bf16 is slower than fp32)")


_logged = set()


def log_bf16_choice(choice: Bf16Choice, what: str) -> None:
    """Log a decision once per process and purpose ("training", "inference")."""
    key = (what, choice)
    if key not in _logged:
        _logged.add(key)
        logger.info("%s: %s", what.capitalize(), choice)


def bf16_autocast(enabled: bool):
    """``torch.autocast("cpu", bfloat16)`` when enabled, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(enabled))
