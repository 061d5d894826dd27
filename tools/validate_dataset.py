#!/usr/bin/env python
"""Report every problem in a COCO-format dataset, then exit 1 if there was any.

    python tools/validate_dataset.py --json instances.json --images dir [--workers 8] [--quick]

The same command as ``detgn validate`` (installed with the package); its code is
:mod:`detgn.cli.validate_dataset`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.validate_dataset import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
