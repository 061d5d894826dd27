"""The research half: the normalization study and what only it needs.

- :mod:`.norm_study`: the study's presets, cells, their evaluation (BN four ways) and the
  per-layer activation gaps;
- :mod:`.runner`: making the data, running the cells (one process each) and writing the report;
- :mod:`.report`: finished cells to medians, the table and the findings;
- :mod:`.plot`: its figures;
- :mod:`.norm_calibration`: offline EvalNorm (``tools/calibrate_norm.py``).

The detection core never imports this package; ``tools/norm_study.py`` and
``tools/calibrate_norm.py`` are its command lines.
"""
