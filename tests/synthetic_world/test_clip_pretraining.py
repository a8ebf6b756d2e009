"""The synthetic world's CLIP pre-training loss: CLIP's symmetric contrastive loss, with every
image of the same caption a positive."""
import clip
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskclip_d2.modeling.clip.openai_loader import CLIPArchitecture
from maskclip_d2.synthetic_world.clip_pretraining import SYNTHETIC_CLIP, contrastive_loss
from maskclip_d2.synthetic_world.world import CONCEPTS, render_concept_image

SMALL = CLIPArchitecture(**{**SYNTHETIC_CLIP.__dict__, "vision_layers": 1, "transformer_layers": 1})


def clip_loss(model, images, captions):
    """OpenAI CLIP's loss: image i and caption i are the only positives."""
    image = F.normalize(model.encode_image(images), dim=-1)
    text = F.normalize(model.encode_text(clip.tokenize(captions, context_length=model.context_length)), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T
    labels = torch.arange(len(captions))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def test_distinct_captions_give_clips_own_loss():
    torch.manual_seed(0)
    model = SMALL.build().eval()
    images = torch.randn(4, 3, 64, 64)
    captions = ["red blob", "grass", "blue blob on sand", "water"]
    assert contrastive_loss(model, images, captions) == pytest.approx(float(clip_loss(model, images, captions)), rel=1e-5)


@torch.no_grad()
def test_images_of_one_caption_are_all_its_positives():
    torch.manual_seed(0)
    model = SMALL.build().eval()
    images = torch.randn(3, 3, 64, 64)
    captions = ["red blob", "grass", "red blob"]
    image = F.normalize(model.encode_image(images), dim=-1)
    text = F.normalize(model.encode_text(clip.tokenize(["grass", "red blob"], context_length=20)), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T  # (3 images, 2 captions)
    image_loss = F.cross_entropy(logits, torch.tensor([1, 0, 1]))
    log_p = logits.T.log_softmax(1)  # captions over images
    text_loss = (-log_p[0, 1] - (log_p[1, 0] + log_p[1, 2]) / 2) / 2
    expected = (image_loss + text_loss) / 2
    assert contrastive_loss(model, images, captions) == pytest.approx(float(expected), rel=1e-5)


def test_every_concept_name_fits_the_context_and_renders():
    for i, concept in enumerate(CONCEPTS):
        assert ", " not in concept.name  # one prompt per class, no synonyms
        clip.tokenize([f"{concept.name} on {CONCEPTS[-1].name}"], context_length=SYNTHETIC_CLIP.context_length)
        image = render_concept_image(i, np.random.RandomState(i))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
