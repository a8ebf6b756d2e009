"""COCOPanopticLSJDatasetMapper: LSJ resizing keeps masks and classes of the panoptic PNG."""
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from maskclip_d2 import add_maskclip_config
from maskclip_d2.data.dataset_mappers import COCOPanopticLSJDatasetMapper
from maskclip_d2.data.datasets.register_coco_panoptic import register_all_coco_panoptic
from helpers.tiny_datasets import SCENE_SIZE, coco_scene, run_prepare, write_coco_panoptic_scenes


def test_rescaled_and_padded_scene_keeps_every_segment(tmp_path):
    write_coco_panoptic_scenes(tmp_path, splits=("train",), num_images=1)
    run_prepare("prepare_coco_panoptic", tmp_path, "--splits", "train")
    register_all_coco_panoptic(str(tmp_path))
    record = DatasetCatalog.get("coco_2017_train_panoptic")[0]
    cfg = add_maskclip_config(get_cfg())
    cfg.merge_from_list(["INPUT.IMAGE_SIZE", SCENE_SIZE, "INPUT.MIN_SCALE", 0.5,
                         "INPUT.MAX_SCALE", 0.5, "INPUT.RANDOM_FLIP", "none"])
    out = COCOPanopticLSJDatasetMapper(cfg, is_train=True)(record)

    half = SCENE_SIZE // 2  # the scene is scaled to 32 x 32 and padded back to 64 x 64
    assert out["image"].shape == (3, SCENE_SIZE, SCENE_SIZE) and out["image"].dtype == torch.uint8
    inst = out["instances"]
    masks = inst.gt_masks.tensor
    pan, segments, _ = coco_scene(0)
    # contiguous ids: stuff 92, 93 -> 80, 81; things 1, 3 -> 0, 2
    assert inst.gt_classes.tolist() == [80, 81, 0, 2] == [s["category_id"] for s in record["segments_info"]]
    assert masks.shape == (len(segments), SCENE_SIZE, SCENE_SIZE)
    assert not masks[:, half:].any() and not masks[:, :, half:].any()  # padding is void
    padding = torch.ones(SCENE_SIZE, SCENE_SIZE, dtype=torch.bool)
    padding[:half, :half] = False
    assert torch.equal(out["padding_mask"], padding)  # True where the augmentation padded
    assert (masks[:, :half, :half].sum(0) == 1).all()  # the scaled scene: every pixel one segment
    for mask, s in zip(masks, segments):
        assert abs(int(mask.sum()) - s["area"] / 4) <= 2 * np.sqrt(s["area"])  # nearest-neighbour
    assert torch.equal(inst.gt_boxes.tensor[:, 2:].max(0).values, torch.tensor([half, half]).float())
