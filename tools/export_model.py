#!/usr/bin/env python
"""Export a trained detector for deployment: ONNX or a torch.export program, plus metadata.

    python tools/export_model.py --config NAME --format onnx --output DIR MODEL.WEIGHTS model_final.pth
    python tools/export_model.py --config NAME --format torch_export --output DIR MODEL.WEIGHTS model_final.pth

The same command as ``detgn export`` (installed with the package); its code is
:mod:`detgn.cli.export_model`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.export_model import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
