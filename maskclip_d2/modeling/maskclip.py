"""The MaskCLIP meta-architecture: proposals -> MaskCLIP Visual Encoder -> open-vocabulary
classification -> semantic / panoptic / instance outputs.

One image through ``MaskCLIP.forward``:
  1. the frozen proposal network gives Q class-agnostic mask logits, resampled to CLIP's input
     resolution R over the whole image (``proposals.py``);
  2. the image is resized to R x R and CLIP-normalised;
  3. the encoder turns image + masks into one CLIP feature per mask (and, in "rma" mode,
     refined masks, one set per RMA layer);
  4. cosine similarity with the vocabulary's text embeddings / temperature gives class logits,
     plus a no-object logit;
  5. masks are resized to the output size and post-processed (``postprocessing.py``).
"""
import difflib
import functools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn
from torch.nn import functional as F

from ..vocabularies import resolve_vocabulary
from .encoder.clip_baseline import CLIPBaselineEncoder
from .clip.openai_loader import build_clip_model, clip_architecture_from_cfg
from .losses.criterion import SetCriterion, build_set_criterion, gt_masks_of
from .encoder.maskclip_encoder import MaskCLIPVisualEncoder
from .inference_dtype import check_inference_dtype, inference_autocast, proposal_memory_format
from .postprocessing import (
    INSTANCE_THING_FILTERS,
    OVERLAP_RULES,
    ImageMasks,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from .clip.text_encoder import CLIPTextEncoder, check_vocabulary
from .proposals.sam_proposals import check_sam_config
from .proposals.sources import build_proposal_network

__all__ = ["MaskCLIP", "vocabulary_from_metadata", "CLIP_INPUTS", "CLIP_INTERPOLATIONS"]

logger = logging.getLogger(__name__)

# MODEL.MASKCLIP.CLIP_INPUT: what CLIP sees (see MaskCLIP.clip_images).
CLIP_INPUTS = ("padded_batch", "crop")
# MODEL.MASKCLIP.CLIP_INTERPOLATION -> (F.interpolate mode, antialias).
CLIP_INTERPOLATIONS = {
    "bicubic": ("bicubic", False),
    "bicubic_antialias": ("bicubic", True),
    "bilinear": ("bilinear", False),
    "bilinear_antialias": ("bilinear", True),
}


def check_clip_normalisation(cfg, clip_model) -> None:
    """Warns when MODEL.CLIP.PIXEL_MEAN / PIXEL_STD differ from the normalisation an OpenCLIP
    model was trained with (its preprocess config; e.g. LAION's ViT-L-14 uses 0.5 / 0.5)."""
    preprocess = getattr(clip_model.visual, "preprocess_cfg", None)  # OpenCLIP only
    if not preprocess:
        return
    mean = [255.0 * v for v in preprocess["mean"]]
    std = [255.0 * v for v in preprocess["std"]]
    given_mean, given_std = list(cfg.MODEL.CLIP.PIXEL_MEAN), list(cfg.MODEL.CLIP.PIXEL_STD)
    if any(abs(a - b) > 1e-3 for a, b in zip(mean + std, given_mean + given_std)):
        logger.warning(
            f"MODEL.CLIP.PIXEL_MEAN / PIXEL_STD are {given_mean} / {given_std}, but CLIP "
            f"{cfg.MODEL.CLIP.NAME} {cfg.MODEL.CLIP.WEIGHTS} was trained with {mean} / {std}: "
            f"set them to its values"
        )


def vocabulary_from_metadata(metadata):
    """(class names, is_thing flags) of a dataset, in its contiguous-id order.

    Panoptic and semantic datasets list every class in ``stuff_classes`` (Mask2Former's
    convention) with things flagged by ``thing_dataset_id_to_contiguous_id``; instance-only
    datasets list their classes in ``thing_classes``.
    """
    if metadata.name not in DatasetCatalog.list():
        registered = sorted(DatasetCatalog.list())
        close = difflib.get_close_matches(metadata.name, registered, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"dataset {metadata.name!r} is not registered.{hint} Registered datasets: "
            f"{', '.join(registered)}"
        )
    stuff = metadata.get("stuff_classes", None)
    things = metadata.get("thing_classes", None)
    if stuff:
        thing_ids = set(metadata.get("thing_dataset_id_to_contiguous_id", {}).values())
        return list(stuff), [i in thing_ids for i in range(len(stuff))]
    if things:
        return list(things), [True] * len(things)
    raise ValueError(
        f"dataset {metadata.name!r} has neither stuff_classes nor thing_classes in its metadata: "
        "MaskCLIP reads its vocabulary from there"
    )


def resize_masks(masks: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """(M, h, w) -> (M, *size), any M >= 0; the masks themselves when already of that size
    (what interpolating to the same size gives)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    align = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(masks[None], size, mode=mode, **align)[0]


@META_ARCH_REGISTRY.register()
class MaskCLIP(nn.Module):
    """Open-vocabulary universal segmentation (Ding, Wang, Tu, ICML 2023).

    Inputs: Detectron2 dataset dicts with ``"image"`` (3, H, W) in ``INPUT.FORMAT`` (RGB),
    optional ``"height"``/``"width"`` (output size) and, for training or GT proposals,
    ``"instances"`` with ``gt_masks`` and ``gt_classes`` (contiguous ids of the vocabulary).
    Outputs (inference): per image a dict with any of ``"sem_seg"`` (K, h, w),
    ``"panoptic_seg"`` and ``"instances"``, class ids indexing the current vocabulary.

    The vocabulary is the training dataset's in training, the test dataset's in evaluation
    (``set_vocabulary_from_metadata``), or any list of names (``set_vocabulary``).
    """

    @configurable
    def __init__(
        self,
        *,
        proposal_network: nn.Module,
        encoder: nn.Module,
        text_encoder: CLIPTextEncoder,
        criterion: Optional[SetCriterion],
        vocabulary: Sequence[str],
        is_thing: Optional[Sequence[bool]] = None,
        clip_pixel_mean: Sequence[float],
        clip_pixel_std: Sequence[float],
        input_format: str = "RGB",
        semantic_on: bool = True,
        panoptic_on: bool = True,
        instance_on: bool = True,
        object_mask_threshold: float = 0.3,
        overlap_threshold: float = 0.5,
        overlap_rule: str = "mask2former",
        instance_thing_filter: str = "after_topk",
        detections_per_image: int = 100,
        use_objectness: bool = True,
        clip_input: str = "padded_batch",
        clip_interpolation: str = "bicubic",
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        size_divisibility: int = 32,
        clip_weights: Optional[str] = None,
        proposal_weights: Optional[str] = None,
        frozen_weights_in_checkpoints: bool = True,
        release_text_tower: bool = False,
        inference_dtype: str = "float32",
    ):
        """
        Args:
            proposal_network: maps (batched_inputs, R) to mask logits (B, Q, R, R) and
                objectness (B, Q) (see ``proposals.py``); frozen.
            encoder: ``MaskCLIPVisualEncoder`` or ``CLIPBaselineEncoder`` over CLIP's image tower.
            text_encoder: CLIP's text side: (features, vocabulary) -> logits, cached embeddings.
            criterion: training losses over the vocabulary + no-object (None: inference only).
            vocabulary, is_thing: the initial vocabulary and its thing / stuff flags.
            clip_pixel_mean, clip_pixel_std: CLIP's RGB normalisation, in 0-255 units.
            input_format: channel order of ``"image"`` ("RGB" or "BGR").
            semantic_on, panoptic_on, instance_on: which outputs inference returns.
            object_mask_threshold, overlap_threshold, overlap_rule: panoptic post-processing
                (``postprocessing.OVERLAP_RULES``).
            instance_thing_filter: ``postprocessing.INSTANCE_THING_FILTERS``.
            detections_per_image: instances kept per image.
            use_objectness: multiply class probabilities by the proposals' objectness (the
                no-object logit of the training-free modes carries no information).
            clip_input: "padded_batch" (the authors': the batch padded to ``size_divisibility``
                with ``pixel_mean`` is what CLIP sees and what the masks span) or "crop" (each
                image without padding).
            clip_interpolation: resampling to CLIP's resolution, one of ``CLIP_INTERPOLATIONS``.
            pixel_mean: the padding value of "padded_batch" (the proposal network's pixel mean
                in ``input_format`` order, 0-255: its normalised padding is 0).
            size_divisibility: the padded batch's sides are multiples of this.
            clip_weights: where CLIP's weights come from, as the config names them (e.g.
                "MODEL.CLIP.WEIGHTS '' (official ViT-L/14@336px)"); None: nothing names them
                (random weights), so only a checkpoint can hold them.
            proposal_weights: the same for the proposal network's weights.
            frozen_weights_in_checkpoints: checkpoints hold the frozen weights even when the
                config names them (see ``weights_from_config``).
            release_text_tower: ``fix_vocabularies`` frees the text tower after embedding.
            inference_dtype: "float32" or "bfloat16": the proposal network and the encoder
                under autocast in inference (``inference_dtype.py``); training is float32.
        """
        super().__init__()
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("at least one of semantic, panoptic and instance output must be on")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {input_format!r}")
        if clip_input not in CLIP_INPUTS:
            raise ValueError(f"MODEL.MASKCLIP.CLIP_INPUT must be one of {CLIP_INPUTS}, got {clip_input!r}")
        if clip_interpolation not in CLIP_INTERPOLATIONS:
            raise ValueError(
                f"MODEL.MASKCLIP.CLIP_INTERPOLATION must be one of {tuple(CLIP_INTERPOLATIONS)}, "
                f"got {clip_interpolation!r}"
            )
        if overlap_rule not in OVERLAP_RULES:
            raise ValueError(
                f"MODEL.MASKCLIP.TEST.OVERLAP_RULE must be one of {OVERLAP_RULES}, got {overlap_rule!r}"
            )
        if instance_thing_filter not in INSTANCE_THING_FILTERS:
            raise ValueError(
                f"MODEL.MASKCLIP.TEST.INSTANCE_THING_FILTER must be one of {INSTANCE_THING_FILTERS}, "
                f"got {instance_thing_filter!r}"
            )
        self.proposal_network = proposal_network
        self.encoder = encoder
        self.text_encoder = text_encoder
        self.criterion = criterion
        self.input_format = input_format
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.overlap_rule = overlap_rule
        self.instance_thing_filter = instance_thing_filter
        self.detections_per_image = detections_per_image
        self.use_objectness = use_objectness
        self.clip_input = clip_input
        self.clip_interpolation = clip_interpolation
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.clip_weights = clip_weights
        self.proposal_weights = proposal_weights
        self.frozen_weights_in_checkpoints = frozen_weights_in_checkpoints
        self.release_text_tower = release_text_tower
        self.inference_dtype = check_inference_dtype(inference_dtype)
        self.register_buffer("clip_pixel_mean", torch.tensor(clip_pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("clip_pixel_std", torch.tensor(clip_pixel_std).view(-1, 1, 1), False)
        self.set_vocabulary(vocabulary, is_thing)

    @classmethod
    def from_config(cls, cfg):
        mc = cfg.MODEL.MASKCLIP
        # the vocabulary first: a misspelled dataset or preset fails before CLIP loads
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            vocabulary_from_metadata(MetadataCatalog.get(name))
        if mc.PROPOSAL_NETWORK == "sam":  # and a missing SAM checkpoint before CLIP loads
            check_sam_config(cfg)
        options = cls.inference_options(cfg)

        clip_name, weights = cfg.MODEL.CLIP.NAME, cfg.MODEL.CLIP.WEIGHTS
        cache_dir = cfg.MODEL.CLIP.CACHE_DIR or None
        architecture = clip_architecture_from_cfg(cfg)
        clip_model = build_clip_model(clip_name, weights, cache_dir=cache_dir, architecture=architecture)
        if mc.MODE == "baseline":
            encoder = CLIPBaselineEncoder(cfg, clip_model.visual)
        else:
            encoder = MaskCLIPVisualEncoder(cfg, clip_model.visual)
        if encoder.input_resolution is None:
            raise ValueError(
                f"CLIP {cfg.MODEL.CLIP.NAME!r} takes {encoder.input_size} (H, W) images, but MaskCLIP "
                f"resizes images and proposals to a square CLIP input: use a square image size"
            )
        check_clip_normalisation(cfg, clip_model)
        tower_loader = None if weights == "random" else functools.partial(
            build_clip_model, clip_name, weights, cache_dir=cache_dir, architecture=architecture)

        text_encoder = CLIPTextEncoder(cfg, clip_model, tower_loader=tower_loader)
        del clip_model  # its towers live on in the encoders
        criterion = None
        if mc.MODE == "rma":
            criterion = build_set_criterion(len(options["vocabulary"]), mc)
        proposal_network = build_proposal_network(cfg)
        # the padded batch is the proposal network's own, when it pads
        options["size_divisibility"] = getattr(
            getattr(proposal_network, "network", None), "size_divisibility",
            options["size_divisibility"],
        )
        return {
            "proposal_network": proposal_network,
            "encoder": encoder,
            "text_encoder": text_encoder,
            "criterion": criterion,
            **options,
        }

    @classmethod
    def inference_options(cls, cfg) -> Dict:
        """The constructor's arguments other than the networks (vocabulary, normalisation,
        post-processing), read from ``cfg`` without building anything; ``maskclip_d2.deploy``
        gives them to the MaskCLIP that wraps an exported graph."""
        mc = cfg.MODEL.MASKCLIP
        dataset = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
        dataset = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
        if dataset:
            vocabulary, is_thing = vocabulary_from_metadata(MetadataCatalog.get(dataset))
        else:
            vocabulary, is_thing = resolve_vocabulary(list(mc.VOCABULARY))
        if not vocabulary:
            raise ValueError(
                "MaskCLIP needs a vocabulary: name a dataset in DATASETS.TRAIN / DATASETS.TEST "
                "or list class names (or one preset name) in MODEL.MASKCLIP.VOCABULARY"
            )
        test = mc.TEST
        weights = cfg.MODEL.CLIP.WEIGHTS
        return {
            "vocabulary": vocabulary,
            "is_thing": is_thing,
            "clip_pixel_mean": cfg.MODEL.CLIP.PIXEL_MEAN,
            "clip_pixel_std": cfg.MODEL.CLIP.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "overlap_rule": test.OVERLAP_RULE,
            "instance_thing_filter": test.INSTANCE_THING_FILTER,
            "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "use_objectness": mc.MODE != "rma",
            "clip_input": mc.CLIP_INPUT,
            "clip_interpolation": mc.CLIP_INTERPOLATION,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "clip_weights": None if weights == "random" else (
                f"MODEL.CLIP.WEIGHTS {weights!r}" + (f" (official {cfg.MODEL.CLIP.NAME})" if not weights else "")
            ),
            "proposal_weights": (
                f"MODEL.MASKCLIP.PROPOSAL_WEIGHTS {mc.PROPOSAL_WEIGHTS!r}"
                if mc.PROPOSAL_WEIGHTS and mc.PROPOSAL_NETWORK != "gt" else None
            ),
            "frozen_weights_in_checkpoints": mc.FROZEN_WEIGHTS_IN_CHECKPOINTS,
            "release_text_tower": cfg.MODEL.CLIP.RELEASE_TEXT_TOWER,
            "inference_dtype": mc.INFERENCE_DTYPE,
        }

    # ---- vocabulary ----------------------------------------------------------------------
    def set_vocabulary(self, names, is_thing: Optional[Sequence[bool]] = None):
        """Classify against ``names`` from now on: class names, or a preset name
        (``maskclip_d2.vocabularies``, e.g. "ade20k_150", which brings its thing / stuff
        flags unless ``is_thing`` is given; for names, None = all things). Text
        embeddings are computed at the first forward pass with this vocabulary and cached:
        not here, where the text tower may not have its final weights yet (a checkpoint still
        to load, or DDP's broadcast of rank 0's weights, which bypasses the cache's reset)."""
        names, is_thing = resolve_vocabulary(names, is_thing)
        names = list(check_vocabulary(names))
        if is_thing is None:
            is_thing = [True] * len(names)
        if len(is_thing) != len(names):
            raise ValueError(f"is_thing has {len(is_thing)} flags for {len(names)} classes")
        self.vocabulary = names
        self.is_thing = torch.tensor(list(is_thing), dtype=torch.bool)

    def set_vocabulary_from_metadata(self, metadata):
        self.set_vocabulary(*vocabulary_from_metadata(metadata))

    def fix_vocabularies(self, vocabularies: Sequence[Sequence[str]]) -> None:
        """Embeds these vocabularies (and the no-object text) now, on the model's device, and
        with ``release_text_tower`` frees CLIP's text tower: for an evaluation, whose
        vocabularies are known in advance. The cached embeddings serve every forward after;
        another vocabulary later rebuilds the tower from the CLIP weights the config names.
        Call it after loading a checkpoint (loading may change the tower)."""
        for names in [*vocabularies, [self.text_encoder.no_object_name]]:
            self.text_encoder.encode_vocabulary(names, self.device)
        if self.release_text_tower:
            self.text_encoder.release_tower()

    # ---- checkpoints -----------------------------------------------------------------------
    # State-dict prefixes of the frozen weights: CLIP's (image tower, text tower) and the
    # proposal network's.
    CLIP_PREFIXES = ("encoder.visual.", "text_encoder.")
    PROPOSAL_PREFIX = "proposal_network."

    def weights_from_config(self) -> Dict[str, Optional[str]]:
        """{state-dict prefix: where the config takes those weights from, or None if it
        names nothing}: the frozen weights a checkpoint may lack (``StrictCheckpointer``
        then keeps the config's)."""
        sources = {prefix: self.clip_weights for prefix in self.CLIP_PREFIXES}
        sources[self.PROPOSAL_PREFIX] = self.proposal_weights
        return sources

    def weights_left_out_of_checkpoints(self) -> Tuple[str, ...]:
        """State-dict prefixes ``StrictCheckpointer.save`` leaves out: the frozen weights the
        config names (CLIP: 1.7 GB at ViT-L/14@336px; the R50 Mask2Former: 0.18 GB), unless
        ``frozen_weights_in_checkpoints``."""
        if self.frozen_weights_in_checkpoints:
            return ()
        return tuple(p for p, source in self.weights_from_config().items() if source is not None)

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> List[str]:
        """Read by DistributedDataParallel: a text tower kept on the CPU while the rest runs on
        CUDA stays out of DDP (which needs one device type; the tower is frozen and loaded
        alike on every rank)."""
        if self.text_encoder.tower_home.type == self.device.type:
            return []
        return ["text_encoder." + n for n, _ in self.text_encoder.named_parameters()]

    # ---- forward ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.clip_pixel_mean.device

    @property
    def clip_resolution(self) -> int:
        return self.encoder.input_resolution

    def train(self, mode: bool = True):
        super().train(mode)
        self.proposal_network.eval()  # frozen stage 1
        return self

    def padded_size(self, batched_inputs: List[Dict]) -> Optional[Tuple[int, int]]:
        """(height, width) of the padded batch when CLIP sees it ("padded_batch"), else None:
        the largest image's sides rounded up to ``size_divisibility``, as Detectron2's
        ``ImageList.from_tensors`` pads."""
        if self.clip_input != "padded_batch":
            return None
        stride = max(self.size_divisibility, 1)
        height = max(x["image"].shape[-2] for x in batched_inputs)
        width = max(x["image"].shape[-1] for x in batched_inputs)
        # (written so that an exported graph can tell the padded size is never the smaller)
        return (height + -height % stride, width + -width % stride)

    def clip_images(self, batched_inputs: List[Dict], padded_size=None) -> torch.Tensor:
        """(B, 3, R, R): the images resized to CLIP's input resolution, CLIP-normalised.

        With ``padded_size`` (``padded_batch``), every image is first placed top-left in a
        ``padded_size`` canvas of ``pixel_mean``, so CLIP sees the padding as the proposal
        network does; otherwise each image is resized alone."""
        size = self.clip_resolution
        mode, antialias = CLIP_INTERPOLATIONS[self.clip_interpolation]
        images = [x["image"].to(self.device).float() for x in batched_inputs]
        if padded_size is not None:
            # Padded rather than copied into a canvas, so that an exported graph keeps the
            # image size symbolic; exact: the image's pixels + 0, the padding's 0 + the mean.
            padded = []
            for image in images:
                pads = (0, padded_size[1] - image.shape[-1], 0, padded_size[0] - image.shape[-2])
                inside = F.pad(torch.ones_like(image[:1]), pads)
                padded.append(F.pad(image, pads) + (1 - inside) * self.pixel_mean)
            images = padded
        resized = []
        for image in images:
            if self.input_format == "BGR":
                image = image.flip(0)
            image = F.interpolate(
                image[None], (size, size), mode=mode, align_corners=False, antialias=antialias
            )[0]
            resized.append((image - self.clip_pixel_mean) / self.clip_pixel_std)
        return torch.stack(resized)

    def precision(self):
        """The context ``predict`` runs the networks in: bfloat16 autocast on the model's
        device in inference with ``inference_dtype`` "bfloat16", else nothing (float32). In
        bfloat16 the proposal network's convolutions take channels-last weights (faster bf16
        kernels); in float32 they are contiguous, as built."""
        dtype = "float32" if self.training else self.inference_dtype
        proposal_format = proposal_memory_format(dtype)
        if getattr(self, "_proposal_format", torch.contiguous_format) != proposal_format:
            self.proposal_network.to(memory_format=proposal_format)
            self._proposal_format = proposal_format
        return inference_autocast(self.device, dtype)

    def predict(self, batched_inputs: List[Dict], class_embeddings: torch.Tensor) -> Dict:
        """The tensor part of ``forward``: proposals -> MaskCLIP Visual Encoder -> class logits,
        before any loss or post-processing. ``tools/export_onnx.py`` exports this method, so
        an exported model computes what ``forward`` does.

        Args:
            batched_inputs: as for ``forward`` (only ``"image"`` is read, and the
                annotations by "gt" proposals).
            class_embeddings: (K, E) text embeddings of the vocabulary
                (``text_encoder.encode_vocabulary``).

        Returns:
            dict with ``"class_logits"`` (B, M, K + 1), the vocabulary then no-object;
            ``"mask_logits"`` (B, M, R, R) the proposals at CLIP's resolution R;
            ``"objectness"`` (B, M); ``"refined_masks"``: list of (B, M, R, R), one per RMA
            layer (empty without RMA); ``"padded_size"``: ``self.padded_size(batched_inputs)``.
        """
        size = self.clip_resolution
        padded_size = self.padded_size(batched_inputs)
        precision = self.precision()
        with precision:
            mask_logits, objectness = self.proposal_network(batched_inputs, size, padded_size)
        mask_logits = mask_logits.to(self.device, torch.float32)
        objectness = objectness.to(self.device, torch.float32)
        images = self.clip_images(batched_inputs, padded_size)
        with precision:
            encoded = self.encoder(images, mask_logits)
        features = encoded["features"].float()
        encoded["masks"] = [masks.float() for masks in encoded["masks"]]
        class_logits = self.text_encoder.classify(features, class_embeddings, no_object=True)
        return {
            "class_logits": class_logits, "mask_logits": mask_logits, "objectness": objectness,
            "refined_masks": encoded["masks"], "padded_size": padded_size,
        }

    def forward(self, batched_inputs: List[Dict]):
        self.text_encoder.check_no_object(self.vocabulary)
        predictions = self.predict(batched_inputs, self.text_encoder.encode_vocabulary(self.vocabulary))
        if self.training:
            return self.losses(batched_inputs, predictions["class_logits"],
                               predictions["refined_masks"], predictions["padded_size"])
        return self.inference(batched_inputs, predictions)

    def inference(self, batched_inputs: List[Dict], predictions: Dict) -> List[Dict]:
        """``predict``'s outputs -> per image Detectron2's outputs at the image's ``"height"``
        x ``"width"``: class probabilities (times objectness in the training-free modes), the
        output masks (the last RMA layer's, else the proposals) resized, post-processed.
        ``maskclip_d2.deploy`` applies it to an exported graph's outputs."""
        class_logits, refined = predictions["class_logits"], predictions["refined_masks"]
        mask_logits, objectness = predictions["mask_logits"], predictions["objectness"]
        padded_size = predictions["padded_size"]
        if getattr(self.proposal_network, "outputs_are_ground_truth", False):
            output_masks = None  # the ground-truth masks themselves (Table 7)
        else:
            output_masks = refined[-1] if refined else mask_logits
        class_probs = class_logits.float().softmax(-1)
        if self.use_objectness:
            class_probs = torch.cat(
                [class_probs[..., :-1] * objectness[..., None], class_probs[..., -1:]], dim=-1
            )
        results = []
        for b, x in enumerate(batched_inputs):
            height = x.get("height", x["image"].shape[-2])
            width = x.get("width", x["image"].shape[-1])
            if output_masks is None:
                gt = gt_masks_of(x).float().to(self.device)
                mask_probs = resize_masks(gt, (height, width), mode="nearest")
                probs = class_probs[b, : len(gt)]
            else:
                mask_logits_b = self.masks_at_output_size(output_masks[b], x, padded_size)
                if mask_logits_b.untyped_storage().data_ptr() == output_masks.untyped_storage().data_ptr():
                    mask_probs = mask_logits_b.sigmoid()  # the encoder's own tensor: not in place
                else:
                    mask_probs = mask_logits_b.sigmoid_()  # a resized copy: no second (M, H, W) tensor
                probs = class_probs[b]
            results.append(self.inference_one(probs, mask_probs))
        return results

    def masks_at_output_size(self, masks: torch.Tensor, x: Dict, padded_size=None) -> torch.Tensor:
        """(M, R, R) mask logits at CLIP's resolution -> (M, height, width) at input ``x``'s
        output size (float; ``masks`` itself when nothing changes): over the padded batch
        (``padded_size``), as Mask2Former's sem_seg_postprocess, resized to the padded size and
        cropped to the image first."""
        masks = masks.float()
        if padded_size is not None:
            masks = resize_masks(masks, padded_size)
            masks = masks[:, : x["image"].shape[-2], : x["image"].shape[-1]]
        size = (x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1]))
        return resize_masks(masks, size)

    def inference_one(self, class_probs: torch.Tensor, mask_probs: torch.Tensor) -> Dict:
        result = {}
        masks = ImageMasks(mask_probs)  # what panoptic and instance inference share
        if self.semantic_on:
            result["sem_seg"] = retry_if_cuda_oom(semantic_inference)(class_probs, mask_probs)
        if self.panoptic_on:
            result["panoptic_seg"] = retry_if_cuda_oom(panoptic_inference)(
                class_probs, mask_probs, self.is_thing, self.object_mask_threshold,
                self.overlap_threshold, self.overlap_rule, masks,
            )
        if self.instance_on:
            result["instances"] = retry_if_cuda_oom(instance_inference)(
                class_probs, mask_probs, self.detections_per_image, self.is_thing,
                self.instance_thing_filter, masks,
            )
        return result

    def losses(self, batched_inputs, class_logits, refined, padded_size=None) -> Dict[str, torch.Tensor]:
        """Hungarian-matched CE over the vocabulary + no-object, and dice + BCE on the masks of
        every RMA layer (deep supervision; the last layer's are the main output). With a
        ``padded_size`` the predicted masks span the padded batch, so the ground-truth masks
        are padded to it (as Mask2Former's ``prepare_targets``)."""
        if self.criterion is None:
            raise RuntimeError(
                f"MaskCLIP in mode {type(self.encoder).__name__} has nothing to train: "
                "only MODEL.MASKCLIP.MODE 'rma' trains (its RMA weights)"
            )
        if len(self.vocabulary) != self.criterion.num_classes:
            raise ValueError(
                f"the training criterion was built for {self.criterion.num_classes} classes, "
                f"the current vocabulary has {len(self.vocabulary)}"
            )
        targets = []
        for x in batched_inputs:
            masks = gt_masks_of(x).to(self.device)
            if padded_size is not None:
                masks = F.pad(masks, (0, padded_size[1] - masks.shape[-1],
                                      0, padded_size[0] - masks.shape[-2]))
            targets.append({"labels": x["instances"].gt_classes.to(self.device), "masks": masks})
        outputs = {"pred_logits": class_logits, "pred_masks": refined[-1]}
        outputs["aux_outputs"] = [
            {"pred_logits": class_logits, "pred_masks": masks} for masks in refined[:-1]
        ]
        return self.criterion(outputs, targets)
