"""Where a step would wait for the GPU: the host syncs of a model, counted on the CPU.

On CUDA, an operation whose result the host must read (``.item()``, ``bool(tensor)``, a
boolean-mask index or ``nonzero()``, whose output size depends on the data, ``unique``)
blocks Python until the GPU has finished everything queued before it. Each one drains the
queue the host keeps ahead of the GPU. :class:`HostSyncAudit` is a dispatch mode that
records those operations as they run, on any device, so the count of a training step can be
measured, and tested, without a GPU (``tests/benchmark/test_host_syncs.py``); on a GPU,
``torch.cuda.set_sync_debug_mode("warn")`` gives the same sites (``tools/gpu/bench_gpu.py syncs``).
Each record names the operation and the last two detgn frames that called it.
"""
from __future__ import annotations

import collections
import traceback
from typing import Callable, Counter, Dict, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "HostSyncAudit", "audit_host_syncs", "cuda_sync_sites"]

# aten operations that read a value back to the host, or whose output size depends on the data.
SYNC_OPS = frozenset({"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique", "_unique2",
                      "unique_dim", "unique_consecutive", "repeat_interleave", "equal", "is_nonzero"})


def _bool_index(indices) -> bool:
    return any(i is not None and getattr(i, "dtype", None) == torch.bool for i in indices)


def _site() -> str:
    frames = [f for f in traceback.extract_stack() if "/detgn/" in f.filename and "/host_syncs.py" not in f.filename]
    return " < ".join(f"{f.filename.split('/detgn/')[-1]}:{f.lineno} {f.name}" for f in frames[-2:]) or "(outside detgn)"


def _tensors(tree):
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


_TENSOR_CPU = torch.Tensor.cpu


class HostSyncAudit(TorchDispatchMode):
    """``with HostSyncAudit() as audit: ...`` then ``audit.sites``: ``{(op, site): count}``.

    What the code brings to the host with ``.cpu()`` (counted as ``to_host``) and what is
    computed from that alone is host data on a GPU too: reading it is not counted again.
    Copies made with ``.to(device)`` are not counted: on the CPU the audit cannot tell which
    way they would go (on CUDA, a blocking copy either way waits for the GPU, and
    ``torch.cuda.set_sync_debug_mode`` reports those).
    """

    def __init__(self):
        super().__init__()
        self.sites: Counter[Tuple[str, str]] = collections.Counter()

    def __enter__(self):
        audit = self

        def cpu(tensor, *args, **kwargs):
            # On the CPU ``cpu()`` returns the tensor itself, which the audit could not tell
            # apart afterwards: a copy, marked as brought to the host.
            out = _TENSOR_CPU(tensor, *args, **kwargs)
            out = out.clone() if out is tensor else out
            if not getattr(tensor, "_detgn_on_host", False):
                audit.sites[("to_host", _site())] += 1
            out._detgn_on_host = True
            return out

        torch.Tensor.cpu = cpu
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.cpu = _TENSOR_CPU
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        out = func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        if inputs and all(getattr(t, "_detgn_on_host", False) for t in inputs):
            for t in _tensors(out):  # computed from host data alone: host data
                t._detgn_on_host = True
            return out
        if name in ("index", "index_put", "index_put_") and len(args) > 1 and _bool_index(args[1]):
            self.sites[(f"{name}(bool mask)", _site())] += 1
        elif name in SYNC_OPS:
            self.sites[(name, _site())] += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def table(self) -> str:
        return "\n".join(f"{c:5d}  {op:24s} {site}" for (op, site), c in
                         sorted(self.sites.items(), key=lambda kv: (-kv[1], kv[0][1])))


def audit_host_syncs(cfg, *, height: int = 256, width: int = 320, images: int = 2) -> Dict[str, object]:
    """Host syncs of one training step (forward and backward of ``images`` synthetic images,
    after one unrecorded step) and of one inference of the config's model."""
    from detgn.benchmark.model import synthetic_batch
    from detgn.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    batch = synthetic_batch(images, height, width, num_classes=classes)
    model.train()
    model(batch)
    with HostSyncAudit() as train:
        losses = model(batch)
        sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), HostSyncAudit() as infer:
        model(synthetic_batch(1, height, width, num_classes=classes, train=False))
    return {"train_total": train.total, "train": train, "inference_total": infer.total, "inference": infer}


def cuda_sync_sites(fn: Callable[[], object], repeats: int = 1) -> Counter[str]:
    """On a GPU: the syncs CUDA itself reports while ``fn`` runs ``repeats`` times
    (``torch.cuda.set_sync_debug_mode("warn")``), counted by the detgn lines that caused them."""
    import warnings

    sites: Counter[str] = collections.Counter()
    show = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):  # the sync debug mode's warning, not any other
            sites[_site()] += 1
        else:
            show(message, category, filename, lineno, file, line)

    torch.cuda.synchronize()
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(repeats):
                    fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
    finally:
        warnings.showwarning = show
    return sites

