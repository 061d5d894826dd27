"""Where a training or inference step spends its time: ``torch.profiler`` over the Trainer's own steps.

:func:`profile_training` runs the :class:`~detgn.engine.trainer.Trainer`'s step (the same
forward, loss, backward and optimizer step as a real run, bf16 autocast as ``CPU.BF16``
decides) under ``torch.profiler`` and returns, per step:

- the top operators by self CPU time (``aten::native_group_norm``, ``torchvision::roi_align``, ...);
- those times summed into categories (:data:`CATEGORIES`: GroupNorm, convolution, RoIAlign,
  losses, ...);
- the inclusive time of named scopes: the model's parts (``backbone``, ``roi_heads.box_head``,
  ... through forward hooks, forward only), ``data`` (the loader's ``next``), the RPN's anchor
  labelling and the RoI sampler (``label_and_sample_*``), the mask-target rasterisation
  (``mask_rcnn_targets``) and ``Optimizer.step`` (torch's own scope).

Backward operators run in autograd's own thread and carry no scope: they are counted by
operator name (``ConvolutionBackward0`` is in "convolution"). :func:`markdown` renders a
result as the tables of ``docs/profile/``.
"""
from __future__ import annotations

import contextlib
import itertools
import re
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["CATEGORIES", "categorize", "markdown", "profile_config", "profile_inference", "profile_training", "repeat_batch"]

# (category, regular expression on the operator name); the first match wins. Backward ops
# are matched by their autograd node names too (e.g. NativeGroupNormBackward0).
CATEGORIES = [
    ("GroupNorm", r"group_norm|GroupNorm"),
    ("BatchNorm / frozen BN", r"batch_norm|BatchNorm"),
    ("convolution", r"conv|Convolution|mkldnn_convolution"),
    ("linear / matmul", r"addmm|\bmm\b|aten::mm|bmm|matmul|linear|Addmm|MmBackward"),
    ("RoIAlign", r"roi_align|RoIAlign|RoiAlign"),
    ("NMS", r"nms"),
    ("losses", r"cross_entropy|nll_loss|log_softmax|binary_cross_entropy|smooth_l1|l1_loss|NllLoss|LogSoftmax|"
               r"BinaryCrossEntropy|SmoothL1"),
    ("upsample / interpolate", r"upsample|interpolate|Upsample"),
    ("activations (ReLU)", r"relu|Relu|threshold_backward"),
    ("elementwise (add, mul, copy, fill)", r"aten::add|aten::mul|aten::sub|aten::div|copy_|aten::fill_|aten::zero_|"
                                          r"AddBackward|MulBackward|aten::to\b|_to_copy|clamp|aten::where"),
    ("indexing / gather / scatter", r"index|gather|scatter|nonzero|masked|aten::cat|aten::stack|aten::sort|topk|"
                                    r"argsort|unique"),
    ("optimizer", r"Optimizer|_foreach|sgd|adam"),
]
_COMPILED = [(name, re.compile(rx)) for name, rx in CATEGORIES]

# Scopes opened by detgn itself (record_function in the code) and by torch.optim.
CODE_SCOPES = ("data", "rpn.label_and_sample_anchors", "roi_heads.label_and_sample_proposals",
               "mask_rcnn_targets", "Optimizer.step")


def categorize(op_name: str) -> str:
    """The :data:`CATEGORIES` name of a profiler event, "other" when none matches."""
    for name, rx in _COMPILED:
        if rx.search(op_name):
            return name
    return "other"


def _is_scope(name: str) -> bool:
    return name.startswith("model.") or name in CODE_SCOPES or name.startswith("Optimizer.step")


def _part_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """The model's parts worth a scope: its direct children, and those of its ROI heads."""
    parts = {}
    for name, child in model.named_children():
        parts[name] = child
        if name == "roi_heads":
            for sub, m in child.named_children():
                parts[f"roi_heads.{sub}"] = m
    return parts


@contextlib.contextmanager
def _scoped_parts(model: nn.Module):
    """Open a ``model.<part>`` record_function around each part's forward."""
    handles, stack = [], []
    for name, m in _part_modules(model).items():
        def pre(_m, _inp, _name=name):
            rf = record_function(f"model.{_name}")
            rf.__enter__()
            stack.append(rf)

        def post(_m, _inp, _out):
            if stack:
                stack.pop().__exit__(None, None, None)

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _ScopedIterator:
    """An iterator whose ``next`` runs inside the ``data`` scope."""

    def __init__(self, it: Iterable):
        self.it = iter(it)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        with record_function("data"):
            return next(self.it)


def _summarize(prof, steps: int, wall: List[float], top: int) -> Dict:
    events = prof.key_averages()
    ops, scopes, cats = [], {}, {}
    total_self = 0.0
    for e in events:
        name = e.key
        if _is_scope(name):
            scopes[name] = scopes.get(name, 0.0) + e.cpu_time_total / 1e3 / steps
            continue
        if name.startswith("ProfilerStep") or name.startswith("##"):
            continue
        self_ms = e.self_cpu_time_total / 1e3 / steps
        total_self += self_ms
        category = categorize(name)
        ops.append({"op": name, "self_ms": self_ms, "calls": e.count / steps, "category": category})
        cats[category] = cats.get(category, 0.0) + self_ms
    ops.sort(key=lambda r: -r["self_ms"])
    step_ms = 1e3 * sorted(wall)[len(wall) // 2] if wall else None
    return {
        "steps": steps,
        "step_ms_median": step_ms,
        "self_cpu_ms_per_step": total_self,
        "top_ops": ops[:top],
        "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
        "scopes": dict(sorted(scopes.items(), key=lambda kv: -kv[1])),
    }


def profile_training(model: nn.Module, data_loader_fn: Callable[[int], Iterable], *, steps: int = 3,
                     warmup: int = 2, bf16: bool = False, amp: bool = False, optimizer=None,
                     top: int = 25) -> Dict:
    """Profile ``steps`` Trainer steps after ``warmup`` unprofiled ones.

    Args:
        data_loader_fn: ``start_batch -> iterable of batches``, as the Trainer takes it (e.g.
            ``lambda start: itertools.repeat(batch)`` or the config's training loader).
        optimizer: default SGD at LR 1e-4 (random inputs must not make the loss diverge).
    Returns: see :func:`_summarize` (per-step milliseconds).
    """
    from detgn.engine.hooks import HookBase
    from detgn.engine.trainer import Trainer

    model.train()
    opt = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    trainer = Trainer(model=model, optimizer=opt, data_loader_fn=lambda start: _ScopedIterator(data_loader_fn(start)),
                      max_iter=warmup + steps, bf16=bf16, amp=amp)
    wall: List[float] = []
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False,
                   schedule=torch.profiler.schedule(wait=0, warmup=warmup, active=steps, repeat=1))

    class _Step(HookBase):
        def before_step(self):
            self.t0 = time.perf_counter()

        def after_step(self):
            if self.trainer.iter >= warmup:
                wall.append(time.perf_counter() - self.t0)
            prof.step()

    trainer.register_hooks([_Step()])
    with _scoped_parts(model), prof:
        trainer.train()
    return _summarize(prof, steps, wall, top)


def profile_inference(model: nn.Module, batch, *, steps: int = 3, warmup: int = 2, top: int = 25) -> Dict:
    """Profile ``steps`` inference calls of ``model(batch)`` (the model's own autocast decision)."""
    model.eval()
    wall: List[float] = []
    with torch.no_grad(), _scoped_parts(model):
        for _ in range(warmup):
            model(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                t0 = time.perf_counter()
                model(batch)
                wall.append(time.perf_counter() - t0)
    return _summarize(prof, steps, wall, top)


def markdown(result: Dict, title: str, *, top: Optional[int] = 15) -> str:
    """Three tables: categories, scopes and top operators (ms per step, share of self CPU time)."""
    total = result["self_cpu_ms_per_step"] or 1.0
    step = result.get("step_ms_median")
    lines = [f"# {title}", ""]  # a page of its own (the docs build it)
    if step:
        lines += [f"Median step {step:.0f} ms (wall, under the profiler); self CPU time of all operators "
                  f"{total:.0f} ms per step.", ""]
    lines += ["| category | ms / step | share |", "|---|---|---|"]
    lines += [f"| {c} | {ms:.1f} | {100 * ms / total:.1f}% |" for c, ms in result["categories"].items()]
    lines += ["", "| scope (inclusive, forward parts and code scopes) | ms / step |", "|---|---|"]
    lines += [f"| {s} | {ms:.1f} |" for s, ms in result["scopes"].items()]
    lines += ["", "| operator (self CPU) | category | ms / step | calls / step | share |", "|---|---|---|---|---|"]
    for r in result["top_ops"][:top]:
        lines.append(f"| `{r['op']}` | {r['category']} | {r['self_ms']:.1f} | {r['calls']:.0f} | "
                     f"{100 * r['self_ms'] / total:.1f}% |")
    return "\n".join(lines) + "\n"


def repeat_batch(batch) -> Callable[[int], Iterable]:
    """A Trainer ``data_loader_fn`` serving one fixed batch (synthetic inputs)."""
    return lambda start: itertools.repeat(batch)


def profile_config(cfg, task: str, out_md: str, *, height: int, width: int, warmup: int = 2, iters: int = 3,
                   title: str = "") -> Dict:
    """Profile the config's model (random weights, synthetic ``height x width`` inputs, the
    config's ``CPU.BF16`` / ``CPU.CHANNELS_LAST``) and write ``out_md`` and its ``.json``."""
    import json
    import os

    from detgn.benchmark.model import synthetic_batch
    from detgn.modeling import build_model
    from detgn.utils.cpu import resolve_bf16
    from detgn.utils.file_io import atomic_write_text

    torch.manual_seed(0)
    model = build_model(cfg)
    bf16 = resolve_bf16(cfg.CPU.BF16, cfg.MODEL.DEVICE).enabled
    classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if task == "train":
        batch = synthetic_batch(cfg.SOLVER.IMS_PER_GPU, height, width, num_classes=classes)
        result = profile_training(model, repeat_batch(batch), steps=iters, warmup=warmup, bf16=bf16,
                                  amp=cfg.SOLVER.AMP.ENABLED)
    elif task == "inference":
        result = profile_inference(model, synthetic_batch(1, height, width, num_classes=classes, train=False),
                                   steps=iters, warmup=warmup)
    else:
        raise ValueError(f"profiling takes task 'train' or 'inference', got {task!r}")
    result.update(task=task, input=f"{height}x{width}", bf16=bf16, channels_last=bool(cfg.CPU.CHANNELS_LAST),
                  threads=torch.get_num_threads(), torch=torch.__version__)
    head = (f"{task}, {height}x{width}, {cfg.SOLVER.IMS_PER_GPU if task == 'train' else 1} image(s), "
            f"{'bf16 autocast' if bf16 else 'fp32'}, {'channels-last' if cfg.CPU.CHANNELS_LAST else 'NCHW'}, "
            f"{torch.get_num_threads()} thread(s)")
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    atomic_write_text(out_md, markdown(result, f"{title}: {head}" if title else head))
    atomic_write_text(os.path.splitext(out_md)[0] + ".json", json.dumps(result, indent=1))
    print(markdown(result, head, top=10), flush=True)
    return result
