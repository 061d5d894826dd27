"""What the run is running on, printed at start-up so logs of two runs can be compared."""
from __future__ import annotations

import os
import platform
import sys
from typing import List, Tuple

import numpy as np
import torch

__all__ = ["collect_env_info"]

# Variables that change numerics or threading; shown when set.
_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "DETGN_DATASETS",
    "DETGN_CACHE",
)


def _rows() -> List[Tuple[str, str]]:
    import detgn

    rows = [
        ("sys.platform", sys.platform),
        ("platform", platform.platform()),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", np.__version__),
        ("detgn", f"{detgn.__version__} @ {os.path.dirname(detgn.__file__)}"),
        ("PyTorch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
    ]
    try:
        import torchvision

        rows.append(("torchvision", f"{torchvision.__version__} @ {os.path.dirname(torchvision.__file__)}"))
    except ImportError as e:  # the model needs it; say so instead of crashing the report
        rows.append(("torchvision", f"not importable: {e}"))
    rows.append(("PyTorch built with CUDA", str(torch.version.cuda)))
    cuda = torch.cuda.is_available()
    rows.append(("CUDA available", str(cuda)))
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"GPU {i}", f"{p.name} ({p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor})"))
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))
    rows.append(("CPU count", str(os.cpu_count())))
    rows.append(("torch threads (intra-op)", str(torch.get_num_threads())))
    rows.append(("torch threads (inter-op)", str(torch.get_num_interop_threads())))
    for var in _ENV_VARS:
        if var in os.environ:
            rows.append((var, os.environ[var]))
    return rows


def collect_env_info() -> str:
    """A two-column table of python/torch/torchvision/CUDA versions, devices and threads."""
    rows = _rows()
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k.ljust(width)}  {v}" for k, v in rows] + [line])
