"""Config keys of the class-agnostic Mask2Former proposal network (MaskCLIP's stage 1).

Key names are Mask2Former's (``cfg.MODEL.MASK_FORMER.*``, ``cfg.MODEL.SEM_SEG_HEAD.*``); the
defaults are those of Mask2Former's R50 COCO panoptic config, which MaskCLIP trains with a
binary object / no-object head. Keys that Detectron2 already defines (``SEM_SEG_HEAD.IN_FEATURES``,
``CONVS_DIM``, ``NORM``, ``COMMON_STRIDE``, ``RESNETS.*``, ``PIXEL_MEAN``...) keep Detectron2's
defaults here; a stage-1 config file sets them (see
``configs/coco/proposals/class_agnostic_mask2former_R50.yaml``).
"""
from detectron2.config import CfgNode as CN


def add_mask2former_config(cfg):
    """Add the Mask2Former keys to a Detectron2 config (idempotent); returns ``cfg``."""
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
    return cfg
