"""demo/demo.py and the Python API on real photographs, with the tiny random model.

The demo runs in-process (its ``main(argv)``), so each case costs one tiny model build.
"""
import json
import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

from maskclip_d2 import Predictor

from helpers.photos import CLASSES, TINY, VOCAB
from helpers.photos import photo_file as _photo
from helpers.scripts import load_script

demo = load_script("demo/demo.py")


def _check_outputs(out, stem, size, tasks):
    """One PNG per task: the input's width (inputs of DRAW_MIN_SIZE and more are drawn at
    their size) with a legend below; one JSON with segments from the vocabulary."""
    for task in tasks:
        png = os.path.join(out, f"{stem}_{task}.png")
        with Image.open(png) as drawn:
            assert drawn.size[0] == size[0] and drawn.size[1] > size[1] and drawn.mode == "RGB"
    with open(os.path.join(out, f"{stem}.json")) as f:
        record = json.load(f)
    assert record["vocabulary"] == CLASSES
    for task in tasks:
        for segment in record[task]:
            assert segment["class"] in CLASSES
    if "semantic" in tasks:  # every pixel has a class: the areas cover the image
        assert sum(s["area"] for s in record["semantic"]) == size[0] * size[1]
    return record


def test_demo_on_photographs_writes_png_and_json_per_image(tmp_path, capsys):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        _photo(str(inputs), name)
    out = tmp_path / "out"
    rc = demo.main(["--config-file", TINY, "--input", str(inputs), "--output", str(out),
                    "--vocab", VOCAB, "--task", "all"])
    assert rc == 0
    sizes = {"astronaut": (512, 512), "coffee": (600, 400), "chelsea": (451, 300)}
    for stem, size in sizes.items():
        _check_outputs(str(out), stem, size, ["semantic", "panoptic", "instance"])
    assert sorted(os.listdir(out)) == sorted(
        [f"{s}_{t}.png" for s in sizes for t in ("semantic", "panoptic", "instance")]
        + [f"{s}.json" for s in sizes] + ["demo_run.json"]
    )
    printed = capsys.readouterr().out
    assert "RANDOM CLIP weights" in printed
    assert all(f"{s}.png: semantic:" in printed for s in sizes)  # the per-image summary


def test_demo_skips_a_corrupt_file_and_handles_gray_rgba_and_huge_images(tmp_path, capsys):
    inputs = tmp_path / "mixed"
    inputs.mkdir()
    (inputs / "broken.jpg").write_bytes(b"this is not a JPEG, just bytes with a .jpg name")
    _photo(str(inputs), "camera")  # (512, 512) grayscale
    _photo(str(inputs), "astronaut", mode="RGBA")
    huge = np.tile(skimage.data.coffee()[:300, :500], (1, 10, 1))  # 5000 x 300
    _photo(str(inputs), "huge", array=huge, fmt="JPEG", suffix=".jpg")
    out = tmp_path / "out"
    rc = demo.main(["--config-file", TINY, "--input", str(inputs), "--output", str(out),
                    "--vocab", VOCAB, "--task", "semantic", "--max-image-size", "2000"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "broken.jpg: not a readable image" in captured.out + captured.err
    assert "1 input(s) skipped" in captured.out
    assert "(scaled down to 2000x120)" in captured.out
    _check_outputs(str(out), "camera", (512, 512), ["semantic"])
    _check_outputs(str(out), "astronaut", (512, 512), ["semantic"])
    _check_outputs(str(out), "huge", (2000, 120), ["semantic"])
    assert not any(name.startswith("broken") for name in os.listdir(out))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vocab", ""], "vocabulary is empty"),
        (["--vocab", "cat; dog; Cat"], "['Cat'] more than once"),
        (["--vocab", "cat", "--task", "depth"], "unknown --task 'depth'"),
        (["--vocab", "cat", "--task", "semantic,panoptics"], "unknown --task"),
    ],
)
def test_bad_vocabulary_or_task_is_refused_before_the_model_loads(tmp_path, capsys, args, message):
    # Loading this model would fail (no such CLIP file), and no output may be written.
    out = tmp_path / "out"
    argv = ["--config-file", TINY, "--output", str(out), *args,
            "--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"]
    assert demo.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:")
    assert not out.exists()


def test_predictor_reuses_text_embeddings_across_calls():
    predictor = Predictor(TINY)
    text = predictor.model.text_encoder
    encoded = []
    original = text.encode_text

    def counting(texts):
        encoded.extend(texts)
        return original(texts)

    text.encode_text = counting
    image = skimage.data.chelsea()
    vocabulary = ["cat, kitty", "sofa", "wall"]
    first = predictor(image, vocabulary=vocabulary, task="semantic")
    # One text forward per class name (one prompt each, MODEL.MASKCLIP.SPLIT_SYNONYMS False),
    # plus the no-object text, each exactly once.
    assert sorted(encoded) == sorted(["cat, kitty", "sofa", "wall", "other"])
    assert first["sem_seg"].shape == (3, 300, 451)

    encoded.clear()
    predictor(image, vocabulary=vocabulary, task=["panoptic", "instance"])
    predictor(image[..., ::-1].copy(), vocabulary=list(vocabulary), task="semantic")
    assert encoded == []  # same vocabulary: no text forward at all

    predictor(image, vocabulary=["dog"], task="semantic")
    assert encoded == ["dog"]  # a new vocabulary costs only its own names
    encoded.clear()
    predictor(image, vocabulary=vocabulary, task="semantic")
    assert encoded == []  # and the first one is still cached


def test_photos_are_read_upright_from_their_exif_orientation(tmp_path):
    from maskclip_d2.predictor import read_rgb_image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": a phone held upright
    path = str(tmp_path / "phone.jpg")
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(path, exif=exif)
    assert read_rgb_image(path).shape == (30, 20, 3)
    with Image.open(path) as im:
        assert read_rgb_image(im).shape == (30, 20, 3)


# ---- results never replace inputs, each input its own results ------------------------------
def _small_photo(path, name="coffee", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(getattr(skimage.data, name)()[:48, :64]).save(path, format=fmt)
    return path


def test_same_stem_inputs_get_their_own_results_and_repeated_tasks_run_once(tmp_path, capsys):
    inputs = [_small_photo(tmp_path / "a" / "photo.jpg", "coffee", "JPEG"),
              _small_photo(tmp_path / "a" / "photo.png", "chelsea"),
              _small_photo(tmp_path / "b" / "photo.png", "astronaut")]
    out = tmp_path / "out"
    rc = demo.main(["--config-file", TINY, "--input", *map(str, inputs), "--output", str(out),
                    "--vocab", VOCAB, "--task", "semantic,semantic"])
    assert rc == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a/photo_jpg.json", "a/photo_jpg_semantic.png", "a/photo_png.json",
                       "a/photo_png_semantic.png", "b/photo.json", "b/photo_semantic.png", "demo_run.json"]
    for stem, source in zip(["a/photo_jpg", "a/photo_png", "b/photo"], inputs):
        with open(out / f"{stem}.json") as f:
            record = json.load(f)
        assert record["image"] == str(source)
        assert sum(s["area"] for s in record["semantic"]) == 48 * 64  # one semantic map, once
    assert "wrote 3 result(s)" in capsys.readouterr().out


def test_results_that_would_replace_an_input_are_refused_before_the_model_loads(tmp_path, capsys):
    folder = tmp_path / "photos"
    pic = _small_photo(folder / "pic.png")
    original = pic.read_bytes()
    # Loading this model would fail (no such CLIP file): the refusal must come first.
    never_loads = ["--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"]
    for output, message in ((str(folder), f"--output {folder} is not empty"),
                            (str(pic), f"would replace the input {pic}")):
        rc = demo.main(["--config-file", TINY, "--input", str(folder), "--output", output,
                        "--vocab", VOCAB, "--task", "semantic", *never_loads])
        assert rc == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error:")
        assert pic.read_bytes() == original and sorted(os.listdir(folder)) == ["pic.png"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys):
    pic = _small_photo(tmp_path / "pic.png")
    blocker = tmp_path / "results.txt"  # a file where the output folder should be
    blocker.write_text("user data")
    rc = demo.main(["--config-file", TINY, "--input", str(pic), "--output", str(blocker / "out"),
                    "--vocab", VOCAB, "--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write results to {blocker / 'out'}")
    assert blocker.read_text() == "user data"


# ---- stuff classes -----------------------------------------------------------------------
def test_stuff_classes_from_the_command_line_reach_the_model(tmp_path, monkeypatch):
    """The CLI's --stuff gives the model its thing / stuff flags (what the panoptic merging
    does with them: tests/test_predictor.py)."""
    flags = []
    call = Predictor.__call__

    def spy(self, *args, **kwargs):
        outputs = call(self, *args, **kwargs)
        flags.append(self.is_thing)
        return outputs

    monkeypatch.setattr(Predictor, "__call__", spy)
    pic = _small_photo(tmp_path / "in" / "pic.png")
    out = tmp_path / "out"
    rc = demo.main(["--config-file", TINY, "--input", str(pic), "--output", str(out),
                    "--vocab", "toy rabbit, real rabbit; sky, heaven; grass", "--stuff", "HEAVEN; grass",
                    "--task", "panoptic", "--confidence-threshold", "0"])
    assert rc == 0
    assert flags == [[True, False, False]]
    with open(out / "pic.json") as f:
        record = json.load(f)
    assert record["stuff"] == ["sky, heaven", "grass"]
    for s in record["panoptic"]:
        assert s["isthing"] == (s["class"] == "toy rabbit, real rabbit"), s


def test_stuff_that_is_not_in_the_vocabulary_is_refused_before_the_model_loads(tmp_path, capsys):
    rc = demo.main(["--config-file", TINY, "--output", str(tmp_path / "out"),
                    "--vocab", "rabbit; sky", "--stuff", "ocean",
                    "--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"])
    assert rc == 2
    assert "--stuff: stuff classes ['ocean'] are not in the vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_preset_vocabulary_brings_its_stuff_flags(tmp_path, monkeypatch):
    from maskclip_d2.vocabularies import get_vocabulary

    flags = []
    call = Predictor.__call__
    monkeypatch.setattr(Predictor, "__call__", lambda self, *a, **k: (
        call(self, *a, **k), flags.append((self.vocabulary, self.is_thing)))[0])
    pic = _small_photo(tmp_path / "pic.png")
    rc = demo.main(["--config-file", TINY, "--input", str(pic), "--output", str(tmp_path / "out"),
                    "--vocab", "ade20k_150", "--stuff", "person", "--task", "semantic"])
    assert rc == 0
    ade = get_vocabulary("ade20k_150")
    (vocabulary, is_thing), = flags
    assert vocabulary == [c["name"] for c in ade]
    person = next(i for i, c in enumerate(ade) if c["name"] == "person")
    assert ade[person]["isthing"] == 1 and not all(c["isthing"] for c in ade)  # --stuff: stuff
    assert is_thing == [bool(c["isthing"]) and i != person for i, c in enumerate(ade)]


def test_one_output_file_and_several_tasks_give_a_file_per_task(tmp_path):
    pic = _small_photo(tmp_path / "pic.png")
    rc = demo.main(["--config-file", TINY, "--input", str(pic), "--output", str(tmp_path / "res.png"),
                    "--vocab", VOCAB, "--task", "semantic,panoptic"])
    assert rc == 0
    assert sorted(os.listdir(tmp_path)) == ["pic.png", "res.json", "res_panoptic.png", "res_semantic.png"]


# ---- runs never mix: a used --output is refused unless --overwrite -------------------------
def test_a_second_run_into_a_used_folder_is_refused_unless_overwrite_which_replaces_only_its_results(
        tmp_path, capsys):
    pics = [_small_photo(tmp_path / "in" / "one.png"), _small_photo(tmp_path / "in" / "two.png", "chelsea")]
    out = tmp_path / "out"
    common = ["--config-file", TINY, "--output", str(out), "--vocab", VOCAB]
    assert demo.main([*common, "--input", *map(str, pics), "--task", "panoptic,semantic"]) == 0
    first = sorted(os.listdir(out))
    assert first == ["demo_run.json", "one.json", "one_panoptic.png", "one_semantic.png",
                     "two.json", "two_panoptic.png", "two_semantic.png"]
    (out / "notes.txt").write_text("the user's own file")
    before = {n: (out / n).read_bytes() for n in first}
    capsys.readouterr()

    # Refused before the model loads (it could not: no such CLIP file); nothing changed.
    assert demo.main([*common, "--input", str(pics[0]), "--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {out} is not empty") and "--overwrite" in err
    assert {n: (out / n).read_bytes() for n in first} == before

    # --overwrite: the first run's results are gone, the user's file kept; one task is named
    # like several (<stem>_<task>.png).
    assert demo.main([*common, "--input", str(pics[0]), "--task", "panoptic", "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["demo_run.json", "notes.txt", "one.json", "one_panoptic.png"]
    assert (out / "notes.txt").read_text() == "the user's own file"
    with open(out / "demo_run.json") as f:
        assert json.load(f)["written"] == ["one_panoptic.png", "one.json"]


def test_one_png_output_for_several_inputs_is_refused_saying_why(tmp_path, capsys):
    pics = [_small_photo(tmp_path / "in" / f"p{k}.png") for k in range(3)]
    rc = demo.main(["--config-file", TINY, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "x.png"),
                    "--vocab", VOCAB, "--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"])
    assert rc == 2 and len(pics) == 3
    err = capsys.readouterr().err
    assert f"--output {tmp_path / 'x.png'} names one PNG file" in err and "there are 3 inputs" in err
    assert "is a file" not in err and not (tmp_path / "x.png").exists()


def test_help_says_what_runs_without_input_and_where_results_go(capsys):
    help_text = " ".join(demo.get_parser().format_help().split())
    assert "default: scikit-image's photographs astronaut, coffee, chelsea, rocket" in help_text
    assert "written to OUTPUT/inputs/" in help_text
    assert "(default: output/demo_results)" in help_text and "--overwrite" in help_text


def test_result_lines_are_not_mixed_with_a_progress_bar_when_piped(tmp_path, capsys):
    pics = [_small_photo(tmp_path / "in" / f"p{k}.png") for k in range(2)]
    assert demo.main(["--config-file", TINY, "--input", *map(str, pics), "--output", str(tmp_path / "out"),
                      "--vocab", VOCAB, "--task", "semantic"]) == 0
    captured = capsys.readouterr()  # not a terminal, as in a pipe
    assert "img/s" not in captured.err and "images:" not in captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines() if ": semantic:" in line] == list(map(str, pics))
    assert demo.plural(1, "segment") == "1 segment" and demo.plural(2, "segment") == "2 segments"


def test_overwrite_keeps_this_runs_inputs_even_when_an_earlier_run_wrote_them(tmp_path):
    """The first run (no --input) writes its sample photos into OUT/inputs and lists them in
    its record; a second run segmenting those very photos with --overwrite must not remove them."""
    out = tmp_path / "out"
    common = ["--config-file", TINY, "--output", str(out), "--vocab", VOCAB, "--task", "semantic"]
    assert demo.main(common) == 0
    photos = sorted((out / "inputs").iterdir())
    assert len(photos) == 4
    before = {p.name: p.read_bytes() for p in photos}
    assert demo.main([*common, "--input", str(out / "inputs"), "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in sorted((out / "inputs").iterdir())} == before
    assert sorted(n for n in os.listdir(out) if n.endswith("_semantic.png")) == [
        p.stem + "_semantic.png" for p in photos]


# ---- --overwrite removes the earlier run's results only once this run writes its own --------
def test_overwrite_keeps_the_earlier_results_when_the_model_or_every_input_fails(tmp_path, capsys):
    pic = _small_photo(tmp_path / "in" / "one.png")
    out = tmp_path / "out"
    common = ["--config-file", TINY, "--output", str(out), "--vocab", VOCAB, "--task", "semantic",
              "--save-masks", "--overwrite"]
    assert demo.main([*common, "--input", str(pic)]) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert sorted(before) == ["categories.json", "demo_run.json", "one.json", "one.semantic.png",
                              "one_semantic.png"]
    capsys.readouterr()
    # the model cannot load (no such CLIP file): refused, the earlier results all kept
    assert demo.main([*common, "--input", str(pic), "--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"]) == 2
    assert "/nonexistent.pt" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    # a bad config key: the same
    assert demo.main([*common, "--input", str(pic), "--opts", "MODEL.NO_SUCH_KEY", "1"]) == 2
    assert f"error: {TINY} / --opts: Non-existent key: MODEL.NO_SUCH_KEY\n" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    # no input can be read: nothing written, so nothing of the earlier run removed
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a PNG")
    assert demo.main([*common, "--input", str(broken), str(tmp_path / "in" / "missing.png")]) == 1
    assert "skipped" in capsys.readouterr().out
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    # a run that writes replaces them
    assert demo.main([*common, "--input", str(_small_photo(tmp_path / "in2" / "two.png", "chelsea"))]) == 0
    assert sorted(os.listdir(out)) == ["categories.json", "demo_run.json", "two.json", "two.semantic.png",
                                       "two_semantic.png"]


# ---- no output of a run replaces another ---------------------------------------------------
@pytest.mark.parametrize("names, options, first, second", [
    # x's mask file x.panoptic.json is the JSON result of x.panoptic.jpg
    (["x.jpg", "x.panoptic.jpg"], ["--save-masks"],
     "the result {out}/x.panoptic.json of {inputs}/x.panoptic.jpg",
     "the mask file {out}/x.panoptic.json of {inputs}/x.jpg"),
    (["demo_run.png"], [], "the result {out}/demo_run.json of {inputs}/demo_run.png",
     "the run record {out}/demo_run.json"),
    (["categories.png", "cat.png"], ["--save-masks"],
     "the result {out}/categories.json of {inputs}/categories.png",
     "the vocabulary file {out}/categories.json of --save-masks"),
])
def test_outputs_of_one_run_that_would_share_a_name_are_refused_naming_both(
        tmp_path, capsys, names, options, first, second):
    inputs = tmp_path / "in"
    for name in names:
        _small_photo(inputs / name, fmt="JPEG" if name.endswith(".jpg") else "PNG")
    out = tmp_path / "out"
    rc = demo.main(["--config-file", TINY, "--input", *[str(inputs / n) for n in names], "--output", str(out),
                    "--vocab", VOCAB, "--task", "panoptic", *options,
                    "--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"])  # refused before the model loads
    assert rc == 2
    err = capsys.readouterr().err
    expected = f"error: {first} and {second} would be one file: rename".format(out=out, inputs=inputs)
    assert err.startswith(expected), err
    assert not out.exists() or not os.listdir(out)


def test_a_png_output_with_save_masks_reruns_with_overwrite_replacing_only_its_own_files(tmp_path, capsys):
    import torch

    pic = _small_photo(tmp_path / "in" / "pic.png")
    res = tmp_path / "res" / "res.png"
    argv = ["--config-file", TINY, "--input", str(pic), "--output", str(res), "--vocab", VOCAB,
            "--task", "panoptic,semantic", "--save-masks", "--overwrite"]
    torch.manual_seed(0)
    assert demo.main(argv) == 0
    (tmp_path / "res" / "notes.txt").write_text("mine")
    first = {n: (res.parent / n).read_bytes() for n in os.listdir(res.parent)}
    assert sorted(first) == ["categories.json", "notes.txt", "res.json", "res.panoptic.json", "res.panoptic.png",
                             "res.semantic.png", "res_panoptic.png", "res_semantic.png"]
    # the very same command again: its own earlier files replaced by the same ones
    torch.manual_seed(0)
    assert demo.main(argv) == 0, capsys.readouterr().err
    assert {n: (res.parent / n).read_bytes() for n in os.listdir(res.parent)} == first
    # a mask file that is not the earlier run's (its JSON does not list it) is still never replaced
    (res.parent / "res.instances.json").write_text("mine too")
    capsys.readouterr()
    assert demo.main([*argv[:-3], "all", "--save-masks", "--overwrite"]) == 2
    assert f"--save-masks: {res.parent / 'res.instances.json'} exists" in capsys.readouterr().err
    assert (res.parent / "res.instances.json").read_text() == "mine too"


def test_a_categories_file_of_another_vocabulary_is_refused_before_the_earlier_results_go(tmp_path, capsys):
    pic = _small_photo(tmp_path / "in" / "one.png")
    out = tmp_path / "out"
    common = ["--config-file", TINY, "--input", str(pic), "--output", str(out), "--task", "semantic"]
    assert demo.main([*common, "--vocab", VOCAB]) == 0
    # not the earlier run's (its record does not list it): never replaced
    (out / "categories.json").write_text(json.dumps({"categories": [{"id": 0, "name": "dog", "isthing": 1}]}))
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    capsys.readouterr()
    assert demo.main([*common, "--vocab", "cat; sky", "--save-masks", "--overwrite"]) == 2
    assert f"error: {out / 'categories.json'} lists another vocabulary" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
