"""Speed measurements and baselines, all run by ``tools/benchmark.py`` (and the demos):

- :mod:`.model`: the trainer's own training step and inference of a config (and torchvision's
  Mask R-CNN through the same step);
- :mod:`.loader`: the training data loader's images/s (``--task data``);
- :mod:`.evaluator`: COCOEvaluator's cost per image (``--task evaluator``);
- :mod:`.backends`: one model on the export backends side by side (``--backend``), and the
  helpers that make random weights decisive for such comparisons;
- :mod:`.profiling`: where a training or inference step spends its time (``--profile``);
- :mod:`.torchvision_baseline`: torchvision's Mask R-CNN trained and evaluated for a fixed
  time on the same data (``tools/demo_baseline_torchvision.py``).

Nothing in the library imports this package.
"""
