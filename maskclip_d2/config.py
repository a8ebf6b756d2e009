"""Config keys of maskclip-d2. Defaults are the paper's (ViT-L/14@336px, RMA at every L/4-th layer)."""
from detectron2.config import CfgNode as CN


def add_maskclip_config(cfg):
    """Add the MaskCLIP keys to a Detectron2 config (idempotent)."""
    if hasattr(cfg.MODEL, "MASKCLIP"):
        return cfg

    # ---- CLIP ----------------------------------------------------------------------------
    cfg.MODEL.CLIP = CN()
    # An official model name ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px") or "tiny".
    cfg.MODEL.CLIP.NAME = "ViT-L/14@336px"
    # "" = the official file for NAME (looked up in CACHE_DIR, downloaded if allowed);
    # a path = that file (TorchScript .pt or plain state dict); "random" = random init (demo/tests).
    cfg.MODEL.CLIP.WEIGHTS = ""
    # "" = $MASKCLIP_CLIP_CACHE or ~/.cache/clip.
    cfg.MODEL.CLIP.CACHE_DIR = ""

    # ---- MaskCLIP ------------------------------------------------------------------------
    cfg.MODEL.MASKCLIP = CN()
    # "rma" (MaskCLIP), "mask_tokens" (MaskCLIP w/o RMA), "baseline" (CLIP Baseline).
    cfg.MODEL.MASKCLIP.MODE = "rma"
    # Layers (1-based) that get Relative Mask Attention; [] = every L/4-th layer (6,12,18,24 of 24).
    cfg.MODEL.MASKCLIP.RMA_LAYERS = []
    # Masks processed at once in the mask-refinement product (bounds its extra memory).
    cfg.MODEL.MASKCLIP.REFINE_CHUNK_SIZE = 16
    # Mask logits >= this (after sigmoid) mark a patch visible to a mask class token.
    cfg.MODEL.MASKCLIP.MASK_THRESHOLD = 0.5
    # Logits = cosine similarity / TEMPERATURE.
    cfg.MODEL.MASKCLIP.TEMPERATURE = 0.01
    # Prompt templates; "{}" is replaced by the class name. ["{}"] = the bare name (authors).
    cfg.MODEL.MASKCLIP.PROMPT_TEMPLATES = ["{}"]
    # Number of mask proposals kept from the proposal network.
    cfg.MODEL.MASKCLIP.NUM_PROPOSALS = 100
    # Training loss weights (paper: 2 CE + 5 dice + 5 BCE) and the no-object weight.
    cfg.MODEL.MASKCLIP.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASKCLIP.DICE_WEIGHT = 5.0
    cfg.MODEL.MASKCLIP.MASK_WEIGHT = 5.0
    cfg.MODEL.MASKCLIP.NO_OBJECT_WEIGHT = 0.1
    return cfg
