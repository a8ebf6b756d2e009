"""Tiny OpenCLIP models with random weights, built in-process by OpenCLIP's own factory.

``open_clip.create_model`` takes a built-in architecture name and lets keyword arguments replace
its config, so a tiny model is ViT-B-16's entry with a tiny ``vision_cfg`` / ``text_cfg``:
OpenCLIP's real classes (VisionTransformer, ResidualAttentionBlock with LayerScale, its text
transformer), only small. Nothing is downloaded (``pretrained=None``).
"""
import json
import os

import torch


def tiny_config(image_size=64, patch_size=16, width=64, layers=4, embed_dim=32, quick_gelu=False,
                context_length=77, **vision_options):
    """An OpenCLIP model config (``model_cfg``): a tiny ViT (heads of 32 channels) and a tiny
    text transformer with OpenAI's vocabulary (so OpenCLIP's default tokenizer applies)."""
    vision = dict(image_size=image_size, patch_size=patch_size, width=width, layers=layers,
                  head_width=32, **vision_options)
    text = dict(context_length=context_length, vocab_size=49408, width=64, heads=2, layers=2)
    return dict(embed_dim=embed_dim, quick_gelu=quick_gelu, vision_cfg=vision, text_cfg=text)


def tiny_openclip(image_size=64, patch_size=16, width=64, layers=4, seed=0, **options):
    """A tiny random ``open_clip.CLIP`` in eval mode (see ``tiny_config`` for the options)."""
    import open_clip

    torch.manual_seed(seed)
    config = tiny_config(image_size, patch_size, width, layers, **options)
    model = open_clip.create_model("ViT-B-16", pretrained=None, load_weights=False, **config)
    return model.eval()


def write_local_dir(folder, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), **options):
    """A ``local-dir:`` OpenCLIP model folder (OpenCLIP's open_clip_config.json, no weights);
    returns the MODEL.CLIP.NAME that names it."""
    os.makedirs(folder, exist_ok=True)
    config = {"model_cfg": tiny_config(**options), "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(config, f)
    return f"openclip:local-dir:{folder}"
