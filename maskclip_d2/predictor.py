"""A Python API for open-vocabulary segmentation of single images.

    from maskclip_d2 import Predictor
    predictor = Predictor("configs/coco/maskclip_vitl14_336.yaml", weights="model_final.pth")
    outputs = predictor(image, vocabulary=["toy rabbit, real rabbit", "sky", "grass"],
                        task="panoptic")

``image`` is a path, a PIL image or an (H, W, 3) uint8 RGB array; outputs are Detectron2's
(``sem_seg``, ``panoptic_seg``, ``instances``), class ids indexing ``vocabulary``. The text
embeddings of a vocabulary are computed once and reused across calls.
"""
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.data.detection_utils import read_image
from PIL import Image, ImageOps

from .checkpoint import StrictCheckpointer
from .config import get_maskclip_cfg
from .modeling.text_encoder import check_vocabulary

__all__ = ["Predictor", "TASKS", "parse_vocabulary", "check_vocabulary", "read_rgb_image"]

# Output key of each task.
TASKS = {"semantic": "sem_seg", "panoptic": "panoptic_seg", "instance": "instances"}


def parse_vocabulary(text: str) -> List[str]:
    """"toy rabbit, real rabbit; sky; grass" -> ["toy rabbit, real rabbit", "sky", "grass"]:
    semicolons (or new lines) separate classes, commas separate synonyms of one class."""
    classes = []
    for line in text.replace("\n", ";").split(";"):
        synonyms = [s.strip() for s in line.split(",") if s.strip()]
        if synonyms:
            classes.append(", ".join(synonyms))
    return list(check_vocabulary(classes))


def read_rgb_image(image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, a PIL image or an array (gray, RGB or RGBA).
    Raises ValueError naming the file if it is missing or not a readable image."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such image file")
        try:  # Detectron2's reader: applies the EXIF orientation (phone photos)
            image = read_image(path, format="RGB")
        except Exception as err:  # PIL raises many kinds for damaged files
            raise ValueError(f"{path}: not a readable image ({err})") from err
    if isinstance(image, Image.Image):
        image = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got an array of shape {image.shape}")
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


class Predictor:
    """A MaskCLIP model ready for single images (resize, inference, vocabulary handling)."""

    def __init__(
        self,
        cfg: Union[CfgNode, str],
        weights: Optional[str] = None,
        device: Optional[str] = None,
        model: Optional[torch.nn.Module] = None,
    ):
        """
        Args:
            cfg: a MaskCLIP config or the path of its yaml file.
            weights, device: override ``MODEL.WEIGHTS`` and ``MODEL.DEVICE``.
            model: a MaskCLIP already built for ``cfg`` (e.g. ``maskclip_d2.deploy``'s, which
                runs an exported graph with ONNX Runtime); None builds one and loads its weights.
        """
        if isinstance(cfg, (str, os.PathLike)):
            cfg = get_maskclip_cfg(os.fspath(cfg))
        cfg = cfg.clone()
        cfg.defrost()
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        if device is not None:
            cfg.MODEL.DEVICE = device
        cfg.freeze()
        self.cfg = cfg
        if model is None:
            model = build_model(cfg)
            if cfg.MODEL.WEIGHTS:
                StrictCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        self.model = model
        self.model.eval()
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT

    def inputs(self, image) -> Dict:
        """The model's input dict for one image (a path, a PIL image or an (H, W, 3) uint8 RGB
        array): ``"image"`` (3, h, w) uint8 in ``INPUT.FORMAT``, resized by the test-time
        ``ResizeShortestEdge``; ``"height"`` and ``"width"`` of the original image."""
        rgb = read_rgb_image(image)
        height, width = rgb.shape[:2]
        image = rgb if self.input_format == "RGB" else rgb[..., ::-1]
        image = self.resize.get_transform(image).apply_image(image)
        return {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
        }

    @property
    def vocabulary(self) -> List[str]:
        return list(self.model.vocabulary)

    @torch.no_grad()
    def __call__(
        self,
        image,
        vocabulary: Optional[Sequence[str]] = None,
        task: Union[None, str, Sequence[str]] = None,
        is_thing: Optional[Sequence[bool]] = None,
    ) -> Dict:
        """Segments one image.

        Args:
            image: a path, a PIL image or an (H, W, 3) uint8 RGB array.
            vocabulary: class names ("a, b" = synonyms); None keeps the current one.
            task: "semantic", "panoptic", "instance", a list of them, or None for all three.
            is_thing: per class, thing (True) or stuff (False) for panoptic merging;
                None: all things.
        Returns:
            Detectron2's outputs for the task(s), at the image's resolution.
        """
        tasks = list(TASKS) if task is None else [task] if isinstance(task, str) else list(task)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
        if vocabulary is not None:
            vocabulary = list(check_vocabulary(vocabulary))
            if vocabulary != self.model.vocabulary or is_thing is not None:
                self.model.set_vocabulary(vocabulary, is_thing)
        inputs = self.inputs(image)
        model = self.model
        flags = (model.semantic_on, model.panoptic_on, model.instance_on)
        model.semantic_on, model.panoptic_on, model.instance_on = (
            "semantic" in tasks, "panoptic" in tasks, "instance" in tasks
        )
        try:
            return model([inputs])[0]
        finally:
            model.semantic_on, model.panoptic_on, model.instance_on = flags
