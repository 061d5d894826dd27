"""The datasets themselves: where records come from.

- :mod:`.coco`: COCO instances JSON -> records, checked by :mod:`.coco_checks` (what can be
  wrong: :mod:`.coco_problems`); :mod:`.coco_validate` is the full report of
  ``tools/validate_dataset.py``;
- :mod:`.image_folder`: ImageFolder (ImageNet layout) classification sets;
- :mod:`.synthetic` (rendered by :mod:`.synthetic_render`) and :mod:`.synthetic_cls`: the
  generated detection and classification sets;
- :mod:`.builtin`: the built-in names (COCO 2017, the synthetic sets, ImageNet), registered
  when :mod:`detgn.data` is imported.

Mapping records to model inputs and loading them is the rest of :mod:`detgn.data`.
"""
