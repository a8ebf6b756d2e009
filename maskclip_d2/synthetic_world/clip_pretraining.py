"""Contrastive pre-training of a tiny CLIP on captioned images of the synthetic world.

The stand-in for OpenAI's web-scale pre-training: a ``clip.model.CLIP`` trained from scratch
with CLIP's symmetric contrastive loss on images that show one concept each (a thing on a
random texture, or a texture), captioned with the concept's name, alone ("red blob") or with
its background ("red blob on sand"). Every concept, base and novel, is captioned: like web
data, pre-training knows the novel classes' names; only segmentation training does not.

A batch holds few distinct captions, so images with the same caption are all positives of
that caption (the targets of each row are uniform over its positives); each distinct caption
is encoded once per batch.

    python -m maskclip_d2.synthetic_world.clip_pretraining --output clip.pth --steps 400

writes a plain state dict (``torch.save(model.state_dict())``, loaded with
``MODEL.CLIP.NAME "custom"`` and the architecture in ``MODEL.CLIP.ARCHITECTURE``, see
``configs/synthetic/``) and ``<output>.json`` with the zero-shot accuracy per concept.
"""
import argparse
import dataclasses
import json
import logging
import math
import time
from typing import Dict, List, Sequence

import clip
import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.clip.normalization import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from ..modeling.clip.openai_loader import CLIPArchitecture
from ..utils.file_io import atomic_write
from .world import CONCEPTS, render_concept_image

__all__ = ["SYNTHETIC_CLIP", "captions_for", "pretrain_clip", "synthetic_clip", "zero_shot_accuracy"]

logger = logging.getLogger(__name__)

# 64 px, 8 px patches (8 x 8 patches), 4 x 128 vision layers (2 heads: clip.model.CLIP gives
# the vision tower width // 64), 2 x 64 text layers (1 head), 20 tokens per caption.
SYNTHETIC_CLIP = CLIPArchitecture(
    embed_dim=64, image_resolution=64, vision_layers=4, vision_width=128, vision_patch_size=8,
    context_length=20, vocab_size=49408, transformer_width=64, transformer_heads=1,
    transformer_layers=2,
)


def synthetic_clip(image_size: int = 64) -> CLIPArchitecture:
    """The synthetic world's CLIP for ``image_size`` px scenes: SYNTHETIC_CLIP with that input
    resolution (8 px patches: a 16 x 16 token grid at 128 px)."""
    return dataclasses.replace(SYNTHETIC_CLIP, image_resolution=image_size)


def captions_for(concept: int, background: int, rng: np.random.RandomState) -> str:
    """The caption of a pre-training image of ``CONCEPTS[concept]`` (a thing on the texture
    ``background``, or a texture when ``background`` is -1)."""
    name = CONCEPTS[concept].name
    if background >= 0 and rng.rand() < 0.5:
        return f"{name} on {CONCEPTS[background].name}"
    return name


def _normalise(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) CLIP-normalised float."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _batch(rng: np.random.RandomState, batch_size: int, size: int, shuffle_captions: bool):
    """Images (B, 3, size, size) and their captions."""
    stuff = [i for i, c in enumerate(CONCEPTS) if not c.isthing]
    images, captions = [], []
    for _ in range(batch_size):
        concept = int(rng.randint(len(CONCEPTS)))
        background = -1
        if CONCEPTS[concept].isthing:
            background = int(rng.choice(stuff))
        image_rng = np.random.RandomState(rng.randint(2 ** 31))
        images.append(render_concept_image(concept, image_rng, size, None if background < 0 else background))
        named = int(rng.randint(len(CONCEPTS))) if shuffle_captions else concept
        named_background = background
        if shuffle_captions and background >= 0:
            named_background = int(rng.choice(stuff))
        captions.append(captions_for(named, named_background, rng))
    return _normalise(np.stack(images)), captions


def contrastive_loss(model, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """CLIP's symmetric cross-entropy, every image with the same caption a positive."""
    unique = sorted(set(captions))
    index = torch.tensor([unique.index(c) for c in captions])
    tokens = clip.tokenize(unique, context_length=model.context_length)
    image_features = F.normalize(model.encode_image(images), dim=-1)
    text_features = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * image_features @ text_features.T  # (B, U)
    image_loss = F.cross_entropy(logits, index)
    positives = F.one_hot(index, len(unique)).T.float()  # (U, B)
    text_loss = -(positives / positives.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (image_loss + text_loss) / 2


@torch.no_grad()
def zero_shot_accuracy(model, per_concept: int = 20, size: int = 64, seed: int = 12345) -> Dict[str, float]:
    """Accuracy of naming held-out single-concept images among all concept names (bare names,
    the prompt MaskCLIP classifies with), per concept. The images come from
    ``RandomState(seed)``, a stream apart from pre-training's (``RandomState(seed of the run)``)."""
    model.eval()
    names = [c.name for c in CONCEPTS]
    text = F.normalize(model.encode_text(clip.tokenize(names, context_length=model.context_length)), dim=-1)
    rng = np.random.RandomState(seed)
    accuracy = {}
    for i, name in enumerate(names):
        images = _normalise(np.stack([render_concept_image(i, rng, size) for _ in range(per_concept)]))
        predicted = (F.normalize(model.encode_image(images), dim=-1) @ text.T).argmax(1)
        accuracy[name] = float((predicted == i).float().mean())
    return accuracy


def pretrain_clip(
    steps: int,
    batch_size: int = 64,
    lr: float = 5e-4,
    weight_decay: float = 0.1,
    warmup: int = 20,
    seed: int = 0,
    architecture: CLIPArchitecture = SYNTHETIC_CLIP,
    shuffle_captions: bool = False,
    log_every: int = 50,
):
    """Trains a CLIP of ``architecture`` from CLIP's random initialisation for ``steps``
    AdamW steps (linear warm-up, cosine decay). Returns the model (eval mode) and the losses.
    ``shuffle_captions`` gives every image a random caption: a deliberately broken run."""
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    model = architecture.build().float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    losses: List[float] = []
    start = time.time()
    for step in range(steps):
        images, captions = _batch(rng, batch_size, architecture.image_resolution, shuffle_captions)
        loss = contrastive_loss(model, images, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = np.mean(losses[-log_every:])
            logger.info(f"CLIP pre-training: step {step + 1}/{steps}, loss {recent:.3f}, "
                        f"{time.time() - start:.0f} s")
    return model.eval(), losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="state-dict file to write (.pth)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights, the pre-training images and (12345 + seed) the zero-shot test images")
    parser.add_argument("--image-size", type=int, default=SYNTHETIC_CLIP.image_resolution,
                        help="input resolution of the CLIP (a multiple of its 8 px patch)")
    parser.add_argument("--shuffle-captions", action="store_true",
                        help="give every image a random caption (a deliberately broken run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    architecture = synthetic_clip(args.image_size)
    if args.image_size % architecture.vision_patch_size:
        parser.error(f"--image-size {args.image_size} is not a multiple of the patch size "
                     f"{architecture.vision_patch_size}")
    model, losses = pretrain_clip(args.steps, args.batch_size, args.lr, seed=args.seed,
                                  architecture=architecture, shuffle_captions=args.shuffle_captions)
    accuracy = zero_shot_accuracy(model, size=args.image_size, seed=12345 + args.seed)
    logger.info(f"CLIP zero-shot accuracy: {np.mean(list(accuracy.values())):.3f} {accuracy}")
    with atomic_write(args.output) as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_write(args.output + ".json") as tmp, open(tmp, "w") as f:
        json.dump({"steps": args.steps, "first_loss": losses[0], "last_loss": losses[-1],
                   "zero_shot_accuracy": accuracy,
                   "seed": args.seed, "architecture": architecture.__dict__}, f, indent=1)


if __name__ == "__main__":
    main()
