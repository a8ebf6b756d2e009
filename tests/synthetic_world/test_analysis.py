"""mask_token_view: what a mask class token sees of a segment, on a scene worked out by hand."""
import json

import numpy as np
import pytest
from panopticapi.utils import id2rgb
from PIL import Image

from maskclip_d2.synthetic_world.analysis import mask_token_view


def test_a_thing_in_one_patch_and_the_stuff_around_it(tmp_path):
    # 16 x 16 scene, 8 px patches (2 x 2 grid): a 4 x 4 thing in the top-left patch, stuff elsewhere
    ids = np.full((16, 16), 1, dtype=np.uint32)
    ids[0:4, 0:4] = 2
    (tmp_path / "panoptic" / "val_all").mkdir(parents=True)
    Image.fromarray(id2rgb(ids)).save(tmp_path / "panoptic" / "val_all" / "000000.png")
    panoptic = {
        "categories": [{"id": 1, "name": "grass", "isthing": 0}, {"id": 2, "name": "red blob", "isthing": 1}],
        "annotations": [{"image_id": 0, "file_name": "000000.png", "segments_info": [
            {"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]}],
    }
    (tmp_path / "panoptic_val_all.json").write_text(json.dumps(panoptic))
    view = mask_token_view(str(tmp_path), "val_all", patch_size=8)
    # the thing's token sees 1 of 4 patches, of whose 64 pixels 16 are the thing
    assert view["thing"] == pytest.approx({"patches": 25.0, "purity": 25.0})
    # the stuff touches all 4 patches: 240 of their 256 pixels are stuff
    assert view["stuff"] == pytest.approx({"patches": 100.0, "purity": 100.0 * 240 / 256})
    # a 4 px grid separates them: the thing is one whole patch of 16
    view = mask_token_view(str(tmp_path), "val_all", patch_size=4)
    assert view["thing"] == pytest.approx({"patches": 100.0 / 16, "purity": 100.0})
    assert view["stuff"] == pytest.approx({"patches": 100.0 * 15 / 16, "purity": 100.0})
