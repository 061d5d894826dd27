"""detgn: Mask R-CNN with Group Normalization, Detectron-style, in PyTorch."""
from setuptools import find_packages, setup

EXPORT = ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18", "openvino>=2024.0"]

setup(
    name="detgn",
    version="0.1.0",
    description="Mask R-CNN toolkit for COCO detection and segmentation built around Group Normalization",
    packages=find_packages(include=["detgn", "detgn.*"]),
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
        # Deployment (detgn.export, tools/export_model.py, tools/predict.py): the ONNX exporter of
        # torch.onnx needs onnx and onnxscript; onnxruntime and OpenVINO run the exported model.
        "export": EXPORT,
        "dev": ["pytest>=7", "pytest-timeout"] + EXPORT,
    },
)
