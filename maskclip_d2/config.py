"""Config keys of maskclip-d2. Defaults are the paper's (ViT-L/14@336px, RMA at every L/4-th
layer, 100 proposals, 2 CE + 5 dice + 5 BCE, AdamW at 1e-4)."""
import logging

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .modeling.clip.normalization import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD

__all__ = ["add_mask2former_config", "add_maskclip_config", "get_maskclip_cfg", "shapes_only", "choose_device"]


def add_mask2former_config(cfg):
    """Add the Mask2Former keys of the class-agnostic proposal network (MaskCLIP's stage 1) to a
    Detectron2 config (idempotent); returns ``cfg``.

    Key names are Mask2Former's (``cfg.MODEL.MASK_FORMER.*``, ``cfg.MODEL.SEM_SEG_HEAD.*``); the
    defaults are those of Mask2Former's R50 COCO panoptic config, which MaskCLIP trains with a
    binary object / no-object head. Keys that Detectron2 already defines (``SEM_SEG_HEAD.IN_FEATURES``,
    ``CONVS_DIM``, ``NORM``, ``COMMON_STRIDE``, ``RESNETS.*``, ``PIXEL_MEAN``...) keep Detectron2's
    defaults here; a stage-1 config file sets them (see
    ``configs/coco/proposals/class_agnostic_mask2former_R50.yaml``).
    """
    if hasattr(cfg.MODEL, "MASK_FORMER"):
        return cfg

    cfg.MODEL.MASK_FORMER = CN()
    # ---- loss: weights of the Hungarian costs and of the losses alike ----------------------
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    # Points sampled per mask for the matcher and the mask losses (112 * 112).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    # PointRend's k: candidates = OVERSAMPLE_RATIO * TRAIN_NUM_POINTS.
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    # PointRend's beta: share of the points taken where the prediction is most uncertain.
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    # Not Mask2Former's: a remedy for a proposal network that learns to suppress objects left unannotated (void)
    # in training, e.g. novel classes: a query matched to no ground truth whose predicted mask
    # lies in void pixels for at least this fraction of its area gets no no-object loss (as
    # in "Learning Open-World Object Proposals without Learning to Classify", Kim et al.
    # 2022, which stops penalising unannotated regions). 0 = off: the paper's loss.
    cfg.MODEL.MASK_FORMER.VOID_UNPENALISED_FRACTION = 0.0

    # ---- masked-attention transformer decoder ----------------------------------------------
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    # Number of predictions = transformer layers + 1 (the prediction made from the learnable
    # queries before the first layer). Mask2Former's convention: 10 = 9 layers.
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Inputs are padded to a multiple of this (the pixel decoder's coarsest stride).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    # ---- multi-scale deformable-attention pixel decoder -------------------------------------
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # Mask2Former fixes the encoder's feed-forward width at 1024 in code; here it is a key.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024
    # Mask2Former runs the pixel decoder in float32 under any autocast (float16's range). Under
    # bfloat16 autocast (float32's range: MODEL.MASKCLIP.INFERENCE_DTYPE bfloat16) True lets its
    # projections and feed-forward layers run in bfloat16 too (its residual stream, softmax and
    # bilinear sampling stay float32); False is Mask2Former's float32 pixel decoder. Float32
    # runs compute the same either way.
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_BFLOAT16 = True
    return cfg


def add_maskclip_config(cfg):
    """Add the MaskCLIP keys (and the proposal network's Mask2Former keys) to a Detectron2
    config; idempotent. Returns ``cfg``."""
    add_mask2former_config(cfg)
    if hasattr(cfg.MODEL, "MASKCLIP"):
        return cfg

    # ---- CLIP ----------------------------------------------------------------------------
    cfg.MODEL.CLIP = CN()
    # An official model name ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px") or "tiny".
    cfg.MODEL.CLIP.NAME = "ViT-L/14@336px"
    # "" = the official file for NAME (looked up in CACHE_DIR, downloaded if allowed);
    # a path = that file (TorchScript .pt or plain state dict); "random" = random init (demo/tests).
    cfg.MODEL.CLIP.WEIGHTS = ""
    # NAME "custom": a CLIP of your own (e.g. the synthetic world's), its architecture stated
    # here, as clip.model.CLIP's arguments: nothing is guessed from the weights (a state dict
    # has no head counts). VISION_HEADS must be VISION_WIDTH // 64 (clip.model.CLIP's rule).
    cfg.MODEL.CLIP.ARCHITECTURE = CN()
    for key in ("EMBED_DIM", "IMAGE_RESOLUTION", "VISION_LAYERS", "VISION_WIDTH", "VISION_HEADS",
                "VISION_PATCH_SIZE", "CONTEXT_LENGTH", "VOCAB_SIZE", "TRANSFORMER_WIDTH",
                "TRANSFORMER_HEADS", "TRANSFORMER_LAYERS"):
        cfg.MODEL.CLIP.ARCHITECTURE[key] = 0
    # "" = $MASKCLIP_CLIP_CACHE or ~/.cache/clip.
    cfg.MODEL.CLIP.CACHE_DIR = ""
    # CLIP's RGB normalisation, in 0-255 units.
    cfg.MODEL.CLIP.PIXEL_MEAN = [255.0 * v for v in CLIP_PIXEL_MEAN]
    cfg.MODEL.CLIP.PIXEL_STD = [255.0 * v for v in CLIP_PIXEL_STD]
    # Where CLIP's text tower lives (it only embeds new vocabularies): "cpu" keeps it on the
    # CPU whatever MODEL.DEVICE is (it visits MODEL.DEVICE to embed); "" = with the model.
    cfg.MODEL.CLIP.TEXT_TOWER_DEVICE = "cpu"
    # Free the text tower's weights once the vocabularies are fixed (train_net.py --eval-only:
    # every test dataset's vocabulary is embedded first); a new vocabulary reloads it from WEIGHTS.
    cfg.MODEL.CLIP.RELEASE_TEXT_TOWER = True
    # Embed, then offload: between embeddings a text tower living on the CPU is kept in a
    # memory-mapped temporary file, not in memory (0.49 GB less resident at ViT-L/14@336px for
    # a Predictor or demo that keeps its tower for new vocabularies); the same weights and
    # embeddings. See modeling/clip/text_tower_offload.py.
    cfg.MODEL.CLIP.OFFLOAD_TEXT_TOWER = True

    # ---- MaskCLIP ------------------------------------------------------------------------
    cfg.MODEL.MASKCLIP = CN()
    # "rma" (MaskCLIP), "mask_tokens" (MaskCLIP w/o RMA), "baseline" (CLIP Baseline).
    cfg.MODEL.MASKCLIP.MODE = "rma"
    # Layers (1-based) that get Relative Mask Attention; [] = every L/4-th layer (6,12,18,24 of 24).
    cfg.MODEL.MASKCLIP.RMA_LAYERS = []
    # Masks processed at once in the mask-refinement product (bounds its extra memory; 4 keeps
    # a ViT-L/14@336px chunk in a CPU's L3 cache, see benchmarks/benchmark_encoder.py).
    cfg.MODEL.MASKCLIP.REFINE_CHUNK_SIZE = 4
    # The same in training, where every chunk is recomputed in backward: larger chunks save
    # per-chunk work at the same peak memory (benchmarks/benchmark_model.py's training rows).
    cfg.MODEL.MASKCLIP.TRAIN_REFINE_CHUNK_SIZE = 32
    # Mask logits >= this (after sigmoid) mark a patch visible to a mask class token.
    cfg.MODEL.MASKCLIP.MASK_THRESHOLD = 0.5
    # CLIP Baseline: masked images sent through CLIP at once.
    cfg.MODEL.MASKCLIP.BASELINE_CHUNK_SIZE = 32
    # Text of the no-object class (its cosine is the no-object logit; the authors' "other").
    cfg.MODEL.MASKCLIP.NO_OBJECT_NAME = "other"
    # Logits = cosine similarity / TEMPERATURE.
    cfg.MODEL.MASKCLIP.TEMPERATURE = 0.01
    # Prompt templates; "{}" is replaced by the class name. ["{}"] = the bare name (authors).
    cfg.MODEL.MASKCLIP.PROMPT_TEMPLATES = ["{}"]
    # False: each class name string is ONE prompt, "building, edifice" included (the authors');
    # True: "a, b" lists synonyms whose embeddings are averaged.
    cfg.MODEL.MASKCLIP.SPLIT_SYNONYMS = False
    # Vocabulary used when no dataset is named (e.g. the demo); a dataset's metadata wins.
    # Class names, or one preset name (["ade20k_150"]; see maskclip_d2.vocabularies).
    cfg.MODEL.MASKCLIP.VOCABULARY = []
    # The image CLIP sees and the extent of the masks it gets:
    #   "padded_batch": the padded batch (SIZE_DIVISIBILITY, padding = MODEL.PIXEL_MEAN) resized
    #                   to R x R, proposals over the padded extent (the authors');
    #   "crop": each image without its padding resized to R x R, proposals cropped to it.
    cfg.MODEL.MASKCLIP.CLIP_INPUT = "padded_batch"
    # Resampling of the image to R x R: "bicubic" (the authors': without antialiasing, as their
    # torchvision 0.11 did), "bicubic_antialias", "bilinear", "bilinear_antialias".
    cfg.MODEL.MASKCLIP.CLIP_INTERPOLATION = "bicubic"
    # Inference precision of the proposal network and the encoder: "float32" (the paper's) or
    # "bfloat16" (autocast on CPU or CUDA; text embeddings, classification and post-processing
    # stay float32; see modeling/inference_dtype.py). Training is always float32.
    cfg.MODEL.MASKCLIP.INFERENCE_DTYPE = "float32"

    # Proposals: "mask2former" (class-agnostic Mask2Former), "maskrcnn" (Detectron2's Mask
    # R-CNN, one class, class-agnostic masks), "sam" (Segment Anything's automatic masks,
    # MODEL.MASKCLIP.SAM) or "gt" (ground-truth masks, paper Table 7).
    cfg.MODEL.MASKCLIP.PROPOSAL_NETWORK = "mask2former"
    # Checkpoint of the (frozen) proposal network, e.g. a stage-1 model_final.pth, or SAM's
    # official sam_vit_{b,l,h}_*.pth (never downloaded: see docs/SAM.md).
    cfg.MODEL.MASKCLIP.PROPOSAL_WEIGHTS = ""
    # Masks kept from the proposal network (top by objectness).
    cfg.MODEL.MASKCLIP.NUM_PROPOSALS = 100
    # Checkpoints hold every weight (Detectron2's full state dict) when True. False: the frozen
    # weights the config names stay out (CLIP's from MODEL.CLIP.WEIGHTS, the proposal network's
    # from PROPOSAL_WEIGHTS) and come from there when loading; weights it does not name (random
    # CLIP, no PROPOSAL_WEIGHTS) are always saved.
    cfg.MODEL.MASKCLIP.FROZEN_WEIGHTS_IN_CHECKPOINTS = False
    # Binary masks (ground truth, padding) enter the encoder as logits +-GT_MASK_LOGIT.
    cfg.MODEL.MASKCLIP.GT_MASK_LOGIT = 10.0
    # PROPOSAL_NETWORK "sam" (maskclip_d2/modeling/proposals/sam_proposals.py): segment-anything's model
    # and its SamAutomaticMaskGenerator's parameters, with the package's defaults.
    cfg.MODEL.MASKCLIP.SAM = CN()
    # "vit_b", "vit_l", "vit_h" (the checkpoint's type), or "tiny" (random weights, tests only).
    cfg.MODEL.MASKCLIP.SAM.MODEL_TYPE = "vit_h"
    cfg.MODEL.MASKCLIP.SAM.POINTS_PER_SIDE = 32
    cfg.MODEL.MASKCLIP.SAM.POINTS_PER_BATCH = 64
    cfg.MODEL.MASKCLIP.SAM.PRED_IOU_THRESH = 0.88
    cfg.MODEL.MASKCLIP.SAM.STABILITY_SCORE_THRESH = 0.95
    cfg.MODEL.MASKCLIP.SAM.STABILITY_SCORE_OFFSET = 1.0
    cfg.MODEL.MASKCLIP.SAM.BOX_NMS_THRESH = 0.7
    cfg.MODEL.MASKCLIP.SAM.CROP_N_LAYERS = 0
    cfg.MODEL.MASKCLIP.SAM.CROP_NMS_THRESH = 0.7
    cfg.MODEL.MASKCLIP.SAM.CROP_OVERLAP_RATIO = 512 / 1500
    cfg.MODEL.MASKCLIP.SAM.CROP_N_POINTS_DOWNSCALE_FACTOR = 1
    cfg.MODEL.MASKCLIP.SAM.MIN_MASK_REGION_AREA = 0
    # The proposals' objectness (SAM has none): "predicted_iou" (SAM's mask-quality estimate),
    # "stability_score" or "one". Used where class probabilities are multiplied by objectness
    # (modes "mask_tokens", "baseline"); see docs/SAM.md.
    cfg.MODEL.MASKCLIP.SAM.OBJECTNESS = "predicted_iou"
    # Predictor.classify_masks: the most masks of your own classified in one call (all go
    # through CLIP's image tower at once, each as one more token).
    cfg.MODEL.MASKCLIP.MAX_GIVEN_MASKS = 256

    # Training (stage 2): 2 CE + 5 dice + 5 BCE, Hungarian matching on sampled points.
    cfg.MODEL.MASKCLIP.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASKCLIP.DICE_WEIGHT = 5.0
    cfg.MODEL.MASKCLIP.MASK_WEIGHT = 5.0
    cfg.MODEL.MASKCLIP.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASKCLIP.DEEP_SUPERVISION = True
    cfg.MODEL.MASKCLIP.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASKCLIP.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASKCLIP.IMPORTANCE_SAMPLE_RATIO = 0.75

    # Inference outputs and post-processing (the authors' ADE20K evaluation config).
    cfg.MODEL.MASKCLIP.TEST = CN()
    cfg.MODEL.MASKCLIP.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASKCLIP.TEST.PANOPTIC_ON = True
    cfg.MODEL.MASKCLIP.TEST.INSTANCE_ON = True
    cfg.MODEL.MASKCLIP.TEST.OBJECT_MASK_THRESHOLD = 0.3
    cfg.MODEL.MASKCLIP.TEST.OVERLAP_THRESHOLD = 0.5
    # Panoptic overlap test, "mask2former" (the authors') or "visible" (postprocessing.OVERLAP_RULES).
    cfg.MODEL.MASKCLIP.TEST.OVERLAP_RULE = "mask2former"
    # Instances of a things + stuff vocabulary: "after_topk" (the authors': top-k over all
    # classes, then keep things) or "before_topk" (top-k over things).
    cfg.MODEL.MASKCLIP.TEST.INSTANCE_THING_FILTER = "after_topk"

    # ---- data ------------------------------------------------------------------------------
    # Training mapper: "coco_panoptic_lsj" (large-scale jitter on panoptic records) or
    # "coco_panoptic_lsj_class_agnostic" (the same, every segment of class 0: stage-1 Mask R-CNN).
    cfg.INPUT.DATASET_MAPPER_NAME = "coco_panoptic_lsj"
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    # ---- solver ----------------------------------------------------------------------------
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    return cfg


def get_maskclip_cfg(config_file=None, opts=()):
    """Detectron2's defaults + the MaskCLIP keys, then ``config_file`` and ``opts`` (KEY VALUE
    pairs) merged in; not frozen."""
    cfg = add_maskclip_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    choose_device(cfg, config_file, opts)
    return cfg


def shapes_only(cfg):
    """``cfg`` changed so that the model builds on the CPU from nothing: random CLIP, no
    checkpoint, no dataset (the vocabulary from MODEL.MASKCLIP.VOCABULARY, else one class).
    For tools that only need the architecture (FLOP counts, checkpoint key layouts)."""
    cfg.MODEL.CLIP.WEIGHTS = "random"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASKCLIP.PROPOSAL_WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    cfg.MODEL.MASKCLIP.VOCABULARY = list(cfg.MODEL.MASKCLIP.VOCABULARY) or ["object"]
    return cfg


def choose_device(cfg, config_file=None, opts=()):
    """MODEL.DEVICE as the user set it (in ``config_file``, its ``_BASE_`` files or ``opts``);
    otherwise "cuda" when a GPU is usable and "cpu" when not, said in one log line (Detectron2's
    default "cuda" fails on a machine without a GPU). Returns the device."""
    opts = [str(o) for o in opts]
    user_set = "MODEL.DEVICE" in opts[::2]
    if config_file and not user_set:
        loaded = CN.load_yaml_with_base(config_file, allow_unsafe=True)
        user_set = "DEVICE" in (loaded.get("MODEL") or {})
    if not user_set:
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        log = logging.getLogger(__name__)
        if cfg.MODEL.DEVICE == "cpu":
            log.warning("MODEL.DEVICE not set and no GPU is usable: running on the CPU")
        else:
            log.info("MODEL.DEVICE not set: running on the GPU (cuda)")
    return cfg.MODEL.DEVICE
