"""detgn: Mask R-CNN with Group Normalization, Detectron-style, in PyTorch."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
EXPORT = ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18", "openvino>=2024.0"]
# Sphinx with MyST: the guides stay Markdown (readable on GitHub too), the API reference comes
# from the docstrings through autodoc and napoleon (their Args:/Returns: sections).
DOCS = ["sphinx>=7", "myst-parser>=2"]

setup(
    name="detgn",
    version="0.1.0",
    description="Mask R-CNN toolkit for COCO detection and segmentation built around Group Normalization",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",  # an SPDX expression (it replaces the license classifier)
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    packages=find_packages(include=["detgn", "detgn.*"]),
    # The configs are package data, so config names resolve the same from a clone (where the
    # root folder configs/ links here) and from an installed wheel.
    package_data={"detgn": ["configs/*.yaml", "configs/*/*.yaml", "configs/*/README.md"]},
    entry_points={"console_scripts": ["detgn = detgn.cli.main:main"]},
    python_requires=">=3.10",
    # Unpinned torch/torchvision: pip picks a matching pair, so torchvision's
    # compiled ops (nms, roi_align) load. Never pin torchvision alone.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "pycocotools>=2.0.6",
        "fvcore>=0.1.5",
        "opencv-python-headless>=4.5",
        "yacs>=0.1.8",
        "numpy",
        "pyyaml",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        # Deployment (detgn.export, `detgn export`, `detgn predict`): the ONNX exporter of
        # torch.onnx needs onnx and onnxscript; onnxruntime and OpenVINO run the exported model.
        "export": EXPORT,
        "docs": DOCS,
        # setuptools and wheel: tests/test_packaging.py builds the wheel without build isolation.
        "dev": ["pytest>=7", "pytest-timeout", "setuptools>=64", "wheel"] + EXPORT + DOCS,
    },
)
