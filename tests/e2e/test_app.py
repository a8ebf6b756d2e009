"""demo/app.py's logic without a browser (tests/e2e/test_app_browser.py drives the page): the
vocabulary from the box, the presets and the stuff field; bad input refused with a readable
message; huge images scaled down with a notice; sliders that post-process cached outputs as
a full run would; concurrent requests each getting their own result; a result's files kept
for the last ``keep_requests`` requests, however old."""
import importlib.util
import os
import threading

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from maskclip_d2 import Predictor, get_maskclip_cfg
from maskclip_d2.vocabularies import get_vocabulary
from helpers.photos import REPO as ROOT
from helpers.photos import TINY


def _load_app():
    spec = importlib.util.spec_from_file_location("maskclip_app", os.path.join(ROOT, "demo", "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app_module = _load_app()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    torch.manual_seed(0)
    return app_module.SegmentationApp(Predictor(TINY), max_image_size=120,
                                      temp_root=str(tmp_path_factory.mktemp("app")))


def test_presets_and_typed_classes_combine_with_their_flags():
    names, flags = app_module.combine_vocabulary("toy rabbit, real rabbit; sky; unicorn", ["ade20k_150"], "sky")
    ade = get_vocabulary("ade20k_150")
    assert names[:150] == [c["name"] for c in ade]
    assert flags[:150] == [bool(c["isthing"]) for c in ade]
    # "sky" is an ADE class already (kept once, ADE's stuff flag); the others are new things
    assert names[150:] == ["toy rabbit, real rabbit", "unicorn"] and flags[150:] == [True, True]
    names, flags = app_module.combine_vocabulary("cat; sky, heaven; grass", [], "heaven; grass")
    assert names == ["cat", "sky, heaven", "grass"] and flags == [True, False, False]


@pytest.mark.parametrize("text, presets, stuff, message", [
    ("", [], "", "the vocabulary is empty"),
    (" ; ;", None, "", "the vocabulary is empty"),
    ("cat", ["coco"], "", "unknown preset 'coco': choose from coco_panoptic"),
    ("cat; dog", [], "sky", "stuff classes ['sky'] are not in the vocabulary"),
])
def test_bad_vocabularies_are_refused_with_a_readable_message(text, presets, stuff, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        app_module.combine_vocabulary(text, presets, stuff)


def test_bad_images_are_refused_and_huge_ones_scaled_down_with_a_notice(app, tmp_path):
    with pytest.raises(ValueError, match="no image: upload one"):
        app.segment(None, "cat", [], "")
    broken = tmp_path / "notes.png"
    broken.write_bytes(b"not a PNG")
    with pytest.raises(ValueError) as err:
        app.segment(str(broken), "cat", [], "")
    assert str(err.value).startswith("notes.png: not a readable image")
    assert str(tmp_path) not in str(err.value)  # no server path in the page
    huge = tmp_path / "huge.png"
    Image.fromarray(skimage.data.coffee()).save(huge)  # 600 x 400 > --max-image-size 120
    state, notice = app.segment(str(huge), "cat; cup", [], "")
    assert notice.startswith("The image (600x400) was scaled down to 120x80")
    assert state["rgb"].shape == (80, 120, 3)


def test_sliders_post_process_the_cached_outputs_as_a_full_run(app, tmp_path):
    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()[::5, ::5]).save(path)
    state, _ = app.segment(str(path), "cat; cup; table", [], "table")
    runs = app.model_runs
    drawn, segments, zip_path, _, used, _ = app.render(state, 0.2, 0.3, 7, 0.0)
    assert app.model_runs == runs  # post-processing only
    assert "top-k 7" in used and len(segments["instance"]) == 7
    # the same as a full run of the model configured with those thresholds
    opts = ["MODEL.MASKCLIP.TEST.OBJECT_MASK_THRESHOLD", "0.2", "MODEL.MASKCLIP.TEST.OVERLAP_THRESHOLD",
            "0.3", "TEST.DETECTIONS_PER_IMAGE", "7"]
    torch.manual_seed(0)  # the app's weights, in a model built with those thresholds
    other = Predictor(get_maskclip_cfg(TINY, opts))
    full = other(state["rgb"], vocabulary=["cat", "cup", "table"], stuff=["table"], task="all")
    expected, _ = app_module.draw_outputs(state["rgb"], full, ["cat", "cup", "table"],
                                          ["semantic", "panoptic", "instance"], 0.0)
    for task in expected:
        assert np.array_equal(drawn[task], expected[task]), task
    assert os.path.basename(zip_path) == "coffee_masks.zip"


def test_concurrent_requests_each_get_their_own_result(app, tmp_path):
    path = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()[::4, ::4]).save(path)
    vocabularies = ["cat; sofa", "dog; wall; floor", "kitten, cat; grass"]
    serial = [app.render(app.segment(str(path), v, [], "")[0], 0.0, 0.5, 100, 0.0)[1] for v in vocabularies]
    results = [None] * len(vocabularies)

    def request(i):
        state, _ = app.segment(str(path), vocabularies[i], [], "")
        results[i] = app.render(state, 0.0, 0.5, 100, 0.0)[1]

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(vocabularies)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def test_a_results_files_stay_downloadable_until_keep_requests_newer_requests(app, tmp_path):
    """The page links a result's files (its pictures, its zip) for as long as it is shown:
    however old, a request's folder stays until ``keep_requests`` newer requests came."""
    import zipfile

    path = tmp_path / "rocket.png"
    Image.fromarray(skimage.data.rocket()[::5, ::5]).save(path)
    state, _ = app.segment(str(path), "rocket; sky", [], "sky")
    zip_path = app.render(state, 0.0, 0.5, 100, 0.5)[2]
    folder = os.path.dirname(zip_path)
    before = open(zip_path, "rb").read()
    os.utime(folder, (0, 0))  # long past any delay: the old code removed it on the next request
    app.render(state, 0.0, 0.5, 100, 0.5)
    assert open(zip_path, "rb").read() == before
    assert sorted(zipfile.ZipFile(zip_path).namelist()) == sorted(
        ["rocket.panoptic.png", "rocket.panoptic.json", "rocket.semantic.png", "rocket.instances.json",
         "categories.json"])

    # bounded: a server keeps the last keep_requests requests' folders, each its own files
    small = app_module.SegmentationApp(app.predictor, max_image_size=120, keep_requests=2,
                                       temp_root=str(tmp_path / "small"))
    results = [small.render(state, 0.0, 0.5, 100, 0.5) for _ in range(3)]
    folders = [os.path.dirname(r[2]) for r in results]
    assert not os.path.exists(folders[0]) and all(os.path.isdir(f) for f in folders[1:])
    drawn, _, zip_path, _, _, pictures = results[-1]
    assert sorted(os.listdir(folders[-1])) == ["rocket_instance.png", "rocket_masks.zip", "rocket_panoptic.png",
                                               "rocket_semantic.png"]
    assert zip_path == os.path.join(folders[-1], "rocket_masks.zip")
    for task, picture in pictures.items():  # the pictures the page shows, as PNG files
        assert np.array_equal(np.asarray(Image.open(picture)), drawn[task]), task
    with pytest.raises(ValueError, match="keep_requests must be 1 or more"):
        app_module.SegmentationApp(app.predictor, keep_requests=0, temp_root=str(tmp_path / "none"))
