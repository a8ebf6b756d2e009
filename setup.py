#!/usr/bin/env python
"""maskclip-d2: MaskCLIP (ICML 2023) open-vocabulary universal segmentation as a Detectron2 plugin.

detectron2 is not on PyPI: install it first (docs/INSTALL.md), e.g. with
`python install/install_detectron2.py`, which `make test` / `make demo` run for you.
"""
from setuptools import find_packages, setup

setup(
    name="maskclip-d2",
    version="0.1.0",
    description="MaskCLIP open-vocabulary universal image segmentation for Detectron2",
    packages=find_packages(include=["maskclip_d2", "maskclip_d2.*"]),
    package_data={"maskclip_d2.vocabularies": ["*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "detectron2>=0.6",
        "torch>=2.4",  # torch.get_autocast_dtype (the pixel decoder under bfloat16)
        "torchvision",
        "numpy<2",
        "Pillow>=10.4",
        "openai-clip>=1.0",
        "setuptools<81",  # clip and detectron2.model_zoo import pkg_resources
        "fvcore",
        "iopath",
        "pycocotools>=2.0.2",
        "lvis",
        "panopticapi-lite",
        "opencv-python-headless",
        "scipy",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "scikit-image"]},
)
