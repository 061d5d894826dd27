"""Per-image instance annotations or predictions with length-checked fields.

Field names follow one convention: ground truth ``gt_*`` (``gt_boxes``,
``gt_classes``, ``gt_masks``), proposals ``proposal_*`` (``proposal_boxes``,
``objectness_logits``) and predictions ``pred_*`` (``pred_boxes``, ``scores``,
``pred_classes``, ``pred_masks``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch


class Instances:
    """A set of N instances in one image of size ``image_size = (height, width)``.

    Every field is an object with ``len() == N`` (tensor, Boxes, masks, list).
    Indexing (int, slice, bool mask or index tensor) applies to every field.
    """

    def __init__(self, image_size: Tuple[int, int], **fields: Any):
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: Dict[str, Any] = {}
        for k, v in fields.items():
            self.set(k, v)

    @property
    def image_size(self) -> Tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            # Private names (and pickle's probes on a half-built object) are plain misses.
            raise AttributeError(name)
        if name not in self._fields:
            raise AttributeError(f"Instances has no field '{name}'; fields: {list(self._fields)}")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        n = len(value)
        if self._fields:
            expected = len(self)
            if n != expected:
                raise ValueError(
                    f"Adding field '{name}' of length {n} to Instances of length {expected}"
                )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> Dict[str, Any]:
        return self._fields

    def to(self, *args, **kwargs) -> "Instances":
        out = Instances(self._image_size)
        for k, v in self._fields.items():
            if hasattr(v, "to"):
                v = v.to(*args, **kwargs)
            out.set(k, v)
        return out

    def __getitem__(self, item) -> "Instances":
        if isinstance(item, int):
            n = len(self)
            if item >= n or item < -n:
                raise IndexError("Instances index out of range")
            item = item % n
            item = slice(item, item + 1)
        elif isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            # The mask's indices once, not a boolean index per field (each a host sync on CUDA).
            item = torch.nonzero(item).squeeze(1)
        out = Instances(self._image_size)
        for k, v in self._fields.items():
            out.set(k, v[item])
        return out

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def __iter__(self):
        raise TypeError("Instances is not iterable; index it instead")

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        """Concatenate instances of the same image (same image_size and fields)."""
        assert len(instance_lists) > 0
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        out = Instances(image_size)
        for k in instance_lists[0]._fields:
            values = [i.get(k) for i in instance_lists]
            v0 = values[0]
            if isinstance(v0, torch.Tensor):
                v = torch.cat(values, dim=0)
            elif isinstance(v0, list):
                v = [x for vals in values for x in vals]
            elif hasattr(type(v0), "cat"):
                v = type(v0).cat(values)
            else:
                raise ValueError(f"Unsupported type {type(v0)} for concatenation")
            out.set(k, v)
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {type(v).__name__}" for k, v in self._fields.items())
        return (
            f"Instances(num_instances={len(self)}, image_height={self._image_size[0]}, "
            f"image_width={self._image_size[1]}, fields=[{fields}])"
        )
