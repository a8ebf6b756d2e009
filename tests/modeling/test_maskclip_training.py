"""Stage 2 learns: overfitting a fixed batch of generated scenes with only the RMA weights."""
import time

import torch
from detectron2.structures import BitMasks, Instances

from helpers.tiny_datasets import coco_scene
from helpers.tiny_maskclip import tiny_model

# The scenes' dataset category ids (two stuff, two things) -> the tiny vocabulary's names.
SCENE_VOCABULARY = {92: "sky", 93: "grass", 1: "person", 3: "cat"}
VOCABULARY = list(SCENE_VOCABULARY.values())


def scene_inputs(count):
    """``count`` 64 x 64 scenes as mapped training inputs (image, gt_masks, gt_classes)."""
    inputs = []
    for k in range(count):
        pan, segments, image = coco_scene(k)
        instances = Instances(pan.shape)
        instances.gt_masks = BitMasks(torch.stack([torch.from_numpy(pan == s["id"]) for s in segments]))
        instances.gt_classes = torch.tensor(
            [VOCABULARY.index(SCENE_VOCABULARY[s["category_id"]]) for s in segments])
        inputs.append({"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                       "instances": instances})
    return inputs


def test_stage2_loss_on_a_fixed_batch_falls_by_more_than_half():
    """Tiny config, mode "rma", ground-truth masks as proposals: CLIP and the proposals are
    frozen, so only the RMA weights can lower the loss (2 CE + 5 dice + 5 BCE, every RMA
    layer supervised)."""
    model = tiny_model("MODEL.MASKCLIP.PROPOSAL_NETWORK", "gt",
                       "MODEL.MASKCLIP.VOCABULARY", str(VOCABULARY))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    batch = scene_inputs(3)
    iterations, losses = 20, []
    start = time.perf_counter()
    torch.manual_seed(0)
    for _ in range(iterations):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    print(f"\nstage-2 overfit, 3 scenes, {iterations} iterations ({seconds:.1f} s): "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f} ({losses[-1] / losses[0]:.1%})")
    assert losses[-1] < 0.5 * losses[0]
