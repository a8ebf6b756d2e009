"""A Python API for open-vocabulary segmentation of single images.

    from maskclip_d2 import Predictor
    predictor = Predictor("configs/coco/maskclip_vitl14_336.yaml", weights="model_final.pth")
    # or: Predictor(config_file, opts=["MODEL.CLIP.WEIGHTS", "clip.pth", ...]) (KEY VALUE pairs)
    outputs = predictor(image, vocabulary=["toy rabbit, real rabbit", "sky", "grass"],
                        task="panoptic")

``image`` is a path, a PIL image or an RGB array (see ``read_rgb_image``); outputs are
Detectron2's (``sem_seg``, ``panoptic_seg``, ``instances``), class ids indexing
``vocabulary``. The text embeddings of a vocabulary are computed once and reused across calls.
Stuff classes (merged into one region in panoptic output, never instances) are named with
``stuff=["sky", "grass"]`` or flagged with ``is_thing``; by default every class is a thing.

Masks of your own are named with ``predictor.classify_masks(image, masks, vocabulary=[...])``.
"""
import contextlib
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from PIL import Image, ImageOps

from .checkpoint import StrictCheckpointer
from .config import get_maskclip_cfg
from .given_masks import read_masks
from .mask_files import save_masks
from .modeling.clip.text_encoder import check_vocabulary
from .modeling.inference_dtype import check_inference_dtype
from .modeling.maskclip import MaskCLIP
from .modeling.proposals.sources import GTProposals
from .vocabularies import resolve_vocabulary

__all__ = [
    "Predictor", "TASKS", "parse_tasks", "parse_vocabulary", "check_vocabulary", "thing_flags",
    "read_rgb_image",
]

# Output key of each task.
TASKS = {"semantic": "sem_seg", "panoptic": "panoptic_seg", "instance": "instances"}


def parse_tasks(task: Union[None, str, Sequence[str]]) -> List[str]:
    """The tasks to run, each once, in the order given: None or "all" -> all three; a name,
    comma-separated names ("semantic,panoptic") or a list of names. ValueError otherwise."""
    if task is None:
        return list(TASKS)
    items = task.split(",") if isinstance(task, str) else list(task)
    tasks = []
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        for name in TASKS if item == "all" else [item]:
            if name not in tasks:
                tasks.append(name)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)} (or 'all')")
    return tasks


def parse_vocabulary(text: str) -> List[str]:
    """"toy rabbit, real rabbit; sky; grass" -> ["toy rabbit, real rabbit", "sky", "grass"]:
    semicolons (or new lines) separate classes, commas separate synonyms of one class."""
    classes = []
    for line in text.replace("\n", ";").split(";"):
        synonyms = [s.strip() for s in line.split(",") if s.strip()]
        if synonyms:
            classes.append(", ".join(synonyms))
    return list(check_vocabulary(classes))


def thing_flags(
    vocabulary: Sequence[str],
    stuff: Optional[Sequence[str]] = None,
    is_thing: Optional[Sequence[bool]] = None,
    default: Optional[Sequence[bool]] = None,
) -> List[bool]:
    """Per class of ``vocabulary``, thing (True) or stuff (False).

    Args:
        vocabulary: the class names ("a, b" = synonyms).
        stuff: names of the stuff classes; a name matches a class by its whole text or any
            of its synonyms, case-insensitively ("sky" marks "sky, heaven"). A name that is
            no class of the vocabulary is a ValueError.
        is_thing: explicit flags, one per class (then ``stuff`` must be None).
        default: the flags before ``stuff`` applies (e.g. a preset's); None: all things.
    """
    names = list(vocabulary)
    if is_thing is not None:
        if stuff is not None:
            raise ValueError("give either is_thing (a flag per class) or stuff (class names), not both")
        flags = list(is_thing)
        if len(flags) != len(names) or not all(isinstance(f, (bool, np.bool_)) for f in flags):
            raise ValueError(
                f"is_thing must hold one True / False per class: {len(names)} classes, got {flags!r}"
            )
        return [bool(f) for f in flags]
    flags = [True] * len(names) if default is None else [bool(f) for f in default]
    if len(flags) != len(names):
        raise ValueError(f"{len(flags)} thing flags for {len(names)} classes")
    if stuff is None:
        return flags
    if isinstance(stuff, str):
        raise ValueError(f"stuff must be a list of class names, got the string {stuff!r}")
    index = {}
    for i, name in enumerate(names):
        for key in [name] + [s.strip() for s in name.split(",")]:
            index.setdefault(key.strip().lower(), i)
    unknown = [s for s in stuff if s.strip().lower() not in index]
    if unknown:
        raise ValueError(
            f"stuff classes {unknown} are not in the vocabulary {names}: name a class or one of "
            "its synonyms"
        )
    for name in stuff:
        flags[index[name.strip().lower()]] = False
    return flags


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """An image array of any numeric dtype as uint8 0-255, or ValueError: floats in [0, 1]
    are scaled by 255, floats in (1, 255] taken as 0-255 values; uint16 is 16-bit
    (0-65535, scaled down); other integers must lie in 0-255."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:
        return np.round(image / 257.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("the image holds NaN or infinite values")
        low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
        if low < 0 or high > 255:
            raise ValueError(
                f"a float image must hold values in [0, 1] (or 0-255), got [{low:g}, {high:g}]"
            )
        scale = 255.0 if high <= 1 else 1.0
        return np.round(image * scale).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer):
        low, high = (int(image.min()), int(image.max())) if image.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(
                f"an {image.dtype} image must hold values in 0-255, got {low}..{high} "
                "(a 16-bit image: pass it as uint16)"
            )
        return image.astype(np.uint8)
    raise ValueError(f"cannot read an image array of dtype {image.dtype}")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image, upright (EXIF orientation applied), as an array: 16-bit and 32-bit gray
    modes keep their values (``_to_uint8`` scales them), everything else becomes RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":  # 32-bit gray: 0-255 as is, up to 65535 as 16-bit
        array = np.asarray(image)
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        return array.astype(np.uint16) if 255 < high <= 65535 and low >= 0 else array
    if image.mode == "F":
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def read_rgb_image(image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, a PIL image or an array.

    Arrays may be (H, W), (H, W, 1) (gray), (H, W, 3) (RGB) or (H, W, 4) (RGBA, alpha
    dropped), of dtype uint8 (0-255), uint16 (16-bit, scaled to 0-255), float (values in
    [0, 1], or 0-255) or another integer type holding 0-255. Files are read upright (EXIF
    orientation); 16-bit PNGs keep their full range. Raises ValueError naming the file if
    it is missing or not a readable image, and saying what is wrong with an array.
    """
    path = None
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such image file")
        try:
            with Image.open(path) as opened:
                image = _pil_to_array(opened)
        except Exception as err:  # PIL raises many kinds for damaged files
            raise ValueError(f"{path}: not a readable image ({err})") from err
    elif isinstance(image, Image.Image):
        image = _pil_to_array(image)
    image = np.asarray(image)
    try:
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
            raise ValueError(
                f"expected an (H, W, 3) RGB image (or (H, W) / (H, W, 1) gray, (H, W, 4) RGBA), "
                f"got an array of shape {image.shape}"
            )
        return np.ascontiguousarray(_to_uint8(image[..., :3]))
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if path else str(err)) from None


class Predictor:
    """A MaskCLIP model ready for single images (resize, inference, vocabulary handling)."""

    def __init__(
        self,
        cfg: Union[CfgNode, str],
        weights: Optional[str] = None,
        device: Optional[str] = None,
        model: Optional[torch.nn.Module] = None,
        opts: Sequence[str] = (),
        dtype: Optional[str] = None,
    ):
        """
        Args:
            cfg: a MaskCLIP config or the path of its yaml file.
            weights, device, dtype: override ``MODEL.WEIGHTS``, ``MODEL.DEVICE`` and
                ``MODEL.MASKCLIP.INFERENCE_DTYPE`` ("float32" or "bfloat16").
            opts: other config overrides, KEY VALUE pairs as on the command line
                (``["MODEL.CLIP.WEIGHTS", "clip.pth", "TEST.DETECTIONS_PER_IMAGE", "50"]``).
            model: a MaskCLIP already built for ``cfg`` (e.g. ``maskclip_d2.deploy``'s, which
                runs an exported graph with ONNX Runtime); None builds one and loads its weights.
        """
        if isinstance(opts, str) or len(opts) % 2:
            raise ValueError(f"opts must be KEY VALUE pairs (a list of even length), got {opts!r}")
        if isinstance(cfg, (str, os.PathLike)):
            cfg = get_maskclip_cfg(os.fspath(cfg), opts)
        else:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.merge_from_list(list(opts))
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        if device is not None:
            cfg.MODEL.DEVICE = device
        if dtype is not None:
            cfg.MODEL.MASKCLIP.INFERENCE_DTYPE = check_inference_dtype(dtype)
        cfg.freeze()
        self.cfg = cfg
        if model is None:
            model = build_model(cfg)
            if cfg.MODEL.WEIGHTS:
                StrictCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        if dtype is not None and hasattr(model, "inference_dtype"):
            model.inference_dtype = dtype
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
        return self._inputs_and_transform(read_rgb_image(image))[0]

    def _inputs_and_transform(self, rgb: np.ndarray):
        height, width = rgb.shape[:2]
        image = rgb if self.input_format == "RGB" else rgb[..., ::-1]
        transform = self.resize.get_transform(image)
        image = transform.apply_image(image)
        inputs = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
        }
        return inputs, transform

    @property
    def vocabulary(self) -> List[str]:
        return list(self.model.vocabulary)

    @property
    def is_thing(self) -> List[bool]:
        """Per class of ``vocabulary``: thing (True) or stuff (False)."""
        return self.model.is_thing.tolist()

    def set_vocabulary(
        self,
        vocabulary: Sequence[str],
        is_thing: Optional[Sequence[bool]] = None,
        stuff: Optional[Sequence[str]] = None,
    ) -> None:
        """Classify against ``vocabulary`` (class names or a preset name) from now on; its
        thing / stuff flags are ``is_thing``, or the preset's (else all things) with the
        classes named in ``stuff`` made stuff. The flags always follow this call."""
        names, preset_flags = resolve_vocabulary(vocabulary)
        names = list(check_vocabulary(names))
        flags = thing_flags(names, stuff=stuff, is_thing=is_thing, default=preset_flags)
        if names != self.model.vocabulary or flags != self.is_thing:
            self.model.set_vocabulary(names, flags)

    @torch.no_grad()
    def __call__(
        self,
        image,
        vocabulary: Optional[Sequence[str]] = None,
        task: Union[None, str, Sequence[str]] = None,
        is_thing: Optional[Sequence[bool]] = None,
        stuff: Optional[Sequence[str]] = None,
    ) -> Dict:
        """Segments one image.

        Args:
            image: a path, a PIL image or an RGB array (see ``read_rgb_image``).
            vocabulary: class names ("a, b" = synonyms), or a preset name ("ade20k_150",
                "coco_panoptic", ...: see ``maskclip_d2.vocabularies``) that brings its
                thing / stuff flags; None keeps the current vocabulary and its flags.
            task: "semantic", "panoptic", "instance", "all", a list of them, or None (all).
            is_thing: per class, thing (True) or stuff (False) for panoptic merging.
            stuff: or the names of the stuff classes (a class or one of its synonyms).
                With a list of names and neither of these, every class is a thing; without a
                vocabulary, they re-flag the current one.
        Returns:
            Detectron2's outputs for the task(s), at the image's resolution; each panoptic
            segment's dict also has ``"class"``, the vocabulary's name of its ``category_id``.
        """
        tasks = parse_tasks(task)
        self._update_vocabulary(vocabulary, is_thing, stuff)
        with self._options(tasks):
            return self._with_class_names(self.model([self.inputs(image)])[0])

    def _with_class_names(self, outputs: Dict) -> Dict:
        """Each panoptic segment's dict gets ``"class"``, the vocabulary's name of its
        ``category_id`` (Detectron2's fields unchanged)."""
        if "panoptic_seg" in outputs:
            for segment in outputs["panoptic_seg"][1]:
                segment["class"] = self.vocabulary[segment["category_id"]]
        return outputs

    def _update_vocabulary(self, vocabulary, is_thing, stuff) -> None:
        if vocabulary is not None:
            self.set_vocabulary(vocabulary, is_thing=is_thing, stuff=stuff)
        elif is_thing is not None or stuff is not None:
            self.set_vocabulary(self.vocabulary, is_thing=is_thing, stuff=stuff)

    @contextlib.contextmanager
    def _options(self, tasks: Sequence[str], **options):
        """The model's tasks and post-processing ``options`` (its attributes:
        ``object_mask_threshold``, ``overlap_threshold``, ``detections_per_image``) changed
        inside the block only."""
        model = self.model
        values = {"semantic_on": "semantic" in tasks, "panoptic_on": "panoptic" in tasks,
                  "instance_on": "instance" in tasks}
        for name, value in options.items():
            if value is not None:
                if not hasattr(model, name):
                    raise ValueError(f"unknown post-processing option {name!r}")
                values[name] = value
        saved = {name: getattr(model, name) for name in values}
        try:
            for name, value in values.items():
                setattr(model, name, value)
            yield
        finally:
            for name, value in saved.items():
                setattr(model, name, value)

    @torch.no_grad()
    def model_outputs(
        self,
        image,
        vocabulary: Optional[Sequence[str]] = None,
        is_thing: Optional[Sequence[bool]] = None,
        stuff: Optional[Sequence[str]] = None,
    ) -> Dict:
        """The model's outputs before post-processing (``MaskCLIP.predict``), with what
        ``postprocess`` needs to finish them: keep it to post-process again with other
        thresholds without running the model. Arguments as for ``__call__``."""
        self._update_vocabulary(vocabulary, is_thing, stuff)
        model = self.model
        model.text_encoder.check_no_object(model.vocabulary)
        inputs = self.inputs(image)
        predictions = model.predict([inputs], model.text_encoder.encode_vocabulary(model.vocabulary))
        return {"inputs": inputs, "predictions": predictions,
                "vocabulary": self.vocabulary, "is_thing": self.is_thing}

    @torch.no_grad()
    def postprocess(
        self,
        cached: Dict,
        task: Union[None, str, Sequence[str]] = None,
        object_mask_threshold: Optional[float] = None,
        overlap_threshold: Optional[float] = None,
        detections_per_image: Optional[int] = None,
    ) -> Dict:
        """Detectron2's outputs from ``model_outputs``' result, as ``__call__`` returns them
        for the same image and vocabulary; thresholds given here replace the config's
        (``MODEL.MASKCLIP.TEST.OBJECT_MASK_THRESHOLD``, ``...OVERLAP_THRESHOLD``,
        ``TEST.DETECTIONS_PER_IMAGE``) for this call."""
        tasks = parse_tasks(task)
        if cached["vocabulary"] != self.vocabulary or cached["is_thing"] != self.is_thing:
            self.set_vocabulary(cached["vocabulary"], is_thing=cached["is_thing"])
        with self._options(tasks, object_mask_threshold=object_mask_threshold,
                           overlap_threshold=overlap_threshold,
                           detections_per_image=detections_per_image):
            return self._with_class_names(self.model.inference([cached["inputs"]], cached["predictions"])[0])

    def save_masks(self, outputs: Dict, folder: str, stem: str, image_id=None) -> List[str]:
        """Writes ``outputs`` (this predictor's, for its current vocabulary) as mask files
        ``folder/<stem>.panoptic.png`` ... and ``folder/categories.json``; see
        ``maskclip_d2.mask_files``. Never replaces a file; returns the paths written."""
        return save_masks(outputs, folder, stem, self.vocabulary, self.is_thing, image_id)

    @torch.no_grad()
    def classify_masks(
        self,
        image,
        masks,
        vocabulary: Optional[Sequence[str]] = None,
        is_thing: Optional[Sequence[bool]] = None,
        stuff: Optional[Sequence[str]] = None,
    ) -> Instances:
        """Names masks of your own (SAM's, an annotation tool's, another model's): each goes
        through the MaskCLIP encoder as a proposal would, exactly as ground-truth masks do in
        ``MODEL.MASKCLIP.PROPOSAL_NETWORK "gt"`` mode (resized with the image, nearest).

        Args:
            image: a path, a PIL image or an RGB array (see ``read_rgb_image``).
            masks: (N, H, W) booleans at the image's size, a label PNG path (each non-zero
                value a mask) or COCO RLEs (see ``maskclip_d2.given_masks``); at most
                ``MODEL.MASKCLIP.MAX_GIVEN_MASKS``. Bad masks raise ValueError before the model runs.
            vocabulary, is_thing, stuff: as for ``__call__``.
        Returns:
            ``Instances`` at the image's size, one per mask in the order given:
            ``class_scores`` (N, K + 1) probabilities over the vocabulary then no-object;
            ``pred_classes`` (N,) the best class of the vocabulary and ``scores`` its
            probability; ``pred_masks`` (N, H, W) bool: in "rma" mode the encoder's refined
            masks (its last RMA layer's), else the masks given; ``pred_boxes`` around them;
            ``mask_ids`` (N,): the label values of a label image, else 0..N-1.
        """
        model = self.model
        if type(model).predict is not MaskCLIP.predict:
            raise ValueError(
                f"classify_masks runs the PyTorch model; {type(model).__name__} computes its own "
                "proposals (an exported graph): use a Predictor built from the config"
            )
        rgb = read_rgb_image(image)
        height, width = rgb.shape[:2]
        given, ids = read_masks(masks, (height, width), self.cfg.MODEL.MASKCLIP.MAX_GIVEN_MASKS)
        self._update_vocabulary(vocabulary, is_thing, stuff)
        inputs, transform = self._inputs_and_transform(rgb)
        # what a dataset mapper does to ground-truth masks: the image's transform, nearest
        resized = np.stack([transform.apply_segmentation(m.astype(np.uint8)) for m in given])
        instances = Instances(tuple(inputs["image"].shape[-2:]))
        instances.gt_masks = BitMasks(torch.from_numpy(resized.astype(bool)))
        instances.gt_classes = torch.zeros(len(given), dtype=torch.int64)
        inputs["instances"] = instances

        proposal_network = model.proposal_network
        model.proposal_network = GTProposals(self.cfg.MODEL.MASKCLIP.GT_MASK_LOGIT)
        try:
            model.text_encoder.check_no_object(model.vocabulary)
            predictions = model.predict([inputs], model.text_encoder.encode_vocabulary(model.vocabulary))
        finally:
            model.proposal_network = proposal_network
        class_scores = predictions["class_logits"][0].float().softmax(-1).cpu()
        if predictions["refined_masks"]:
            refined = model.masks_at_output_size(
                predictions["refined_masks"][-1][0], inputs, predictions["padded_size"]
            )
            pred_masks = (refined > 0).cpu()  # sigmoid > 0.5
        else:
            pred_masks = torch.from_numpy(given)
        result = Instances((height, width))
        result.class_scores = class_scores
        result.scores, result.pred_classes = class_scores[:, :-1].max(dim=1)
        result.pred_masks = pred_masks
        result.pred_boxes = BitMasks(pred_masks).get_bounding_boxes()
        result.mask_ids = torch.as_tensor(ids, dtype=torch.int64)
        return result
