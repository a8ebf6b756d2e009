"""maskclip-d2: MaskCLIP (Ding, Wang, Tu, ICML 2023) as a Detectron2 plugin.

Importing the package registers its meta-architecture and datasets with Detectron2.
"""
from . import _quiet_imports  # noqa: F401  (first: dependencies imported without their deprecation noise)
from .config import add_maskclip_config, get_maskclip_cfg
from . import data  # noqa: F401  (registers the datasets)
from . import modeling  # noqa: F401  (registers META_ARCH_REGISTRY entries)
from .predictor import Predictor

__version__ = "0.1.0"
