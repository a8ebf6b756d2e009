"""ONNX export and ONNX Runtime deployment (maskclip_d2/deploy.py, tools/export_onnx.py) on the
tiny config: the exported graphs compute what the PyTorch model computes.

Tolerances: ONNX Runtime and PyTorch sum in different orders, so float32 outputs differ by
rounding only; class logits (cosine / 0.01, up to 100) within 1e-3 absolute, mask logits and
objectness within 1e-4. Post-processed segments must be identical.

One export (about 40 s of CPU on one thread) serves the whole module.
"""
import json
import os
import sys

import numpy as np
import pytest
import skimage.data
import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from helpers.scripts import load_script
from maskclip_d2 import Predictor, get_maskclip_cfg
from maskclip_d2.deploy import (
    MIN_IMAGE_SIDE, ONNXPredictor, ONNXRuntimeMaskCLIP, export_onnx, text_graph_path,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny", "maskclip_tiny.yaml")
# Every random proposal of the tiny model covers most of the image, so the panoptic default
# (a segment keeps 80% of its mask) would leave no segment to compare.
OPTS = ["MODEL.MASKCLIP.TEST.OVERLAP_THRESHOLD", "0.0"]
CLASS_ATOL, MASK_ATOL = 1e-3, 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The random tiny model scores masks alike to 4 digits, so pixel owners are near-ties
    that the summation order of several threads can flip; one thread fixes that order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread):
    torch.manual_seed(0)
    cfg = get_maskclip_cfg(TINY, OPTS)
    cfg.freeze()
    model = build_model(cfg).eval()
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    paths = export_onnx(model, cfg, path)
    assert paths == {"image_graph": path, "text_graph": text_graph_path(path)}
    return cfg, model, ONNXRuntimeMaskCLIP(path, num_threads=1)


def _photo_inputs(cfg, model, name):
    return Predictor(cfg, model=model).inputs(getattr(skimage.data, name)())


@pytest.mark.parametrize("photo, vocabulary", [
    ("astronaut", None),                             # 128 x 128, the config's 7 classes
    ("coffee", ["cup, mug", "table"]),               # 128 x 192, synonyms, 2 classes
    ("rocket", ["rocket"]),                          # 128 x 192, 1 class
])
def test_onnx_runtime_logits_equal_pytorch(exported, photo, vocabulary):
    cfg, model, onnx_model = exported
    vocabulary = vocabulary or list(cfg.MODEL.MASKCLIP.VOCABULARY)
    inputs = _photo_inputs(cfg, model, photo)
    # The text graph gives the vocabulary's embeddings (templates, synonyms) as the tower does.
    embeddings = onnx_model.text_encoder.encode_vocabulary(vocabulary)
    reference = model.text_encoder.encode_vocabulary(vocabulary)
    assert torch.allclose(embeddings, reference, atol=1e-5)
    with torch.no_grad():
        ours = model.predict([inputs], reference)
    theirs = onnx_model.predict([inputs], reference)
    masks = ours["refined_masks"][-1]
    num_masks = cfg.MODEL.MASKCLIP.NUM_PROPOSALS
    resolution = model.clip_resolution
    assert theirs["class_logits"].shape == (1, num_masks, len(vocabulary) + 1)
    assert theirs["mask_logits"].shape == (1, num_masks, resolution, resolution)
    torch.testing.assert_close(theirs["class_logits"], ours["class_logits"], atol=CLASS_ATOL, rtol=0)
    torch.testing.assert_close(theirs["mask_logits"], masks, atol=MASK_ATOL, rtol=0)
    torch.testing.assert_close(theirs["objectness"], ours["objectness"], atol=MASK_ATOL, rtol=0)


# The random tiny CLIP scores every mask alike (to 4 digits), so panoptic pixels go to
# whichever overlapping mask has the larger probability, a near-tie in places: on astronaut 2
# of 262144 pixels change owner with the rounding. A trained model has no such ties.
@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_onnx_predictor_gives_the_same_segments_as_pytorch(exported, photo):
    cfg, model, onnx_model = exported
    image = getattr(skimage.data, photo)()
    vocabulary = ["cat", "sky", "person, astronaut", "grass", "wall"]
    ours = Predictor(cfg, model=model)(image, vocabulary=vocabulary)
    theirs = Predictor(onnx_model.cfg, model=onnx_model)(image, vocabulary=vocabulary)

    segments, info = ours["panoptic_seg"]
    assert len(info) >= 2  # something to compare
    assert torch.equal(theirs["panoptic_seg"][0], segments)
    their_info = theirs["panoptic_seg"][1]
    assert [{k: v for k, v in s.items() if k != "score"} for s in their_info] == \
        [{k: v for k, v in s.items() if k != "score"} for s in info]
    np.testing.assert_allclose([s["score"] for s in their_info], [s["score"] for s in info], atol=1e-5)
    assert torch.equal(theirs["sem_seg"].argmax(0), ours["sem_seg"].argmax(0))
    # Instances are compared as a set: the tiny model's equal scores leave their order to the
    # rounding. Their binary masks are mask_probs >= 0.5 over all pixels, where a logit within
    # rounding of 0 may flip a pixel: each instance has a partner of its class with IoU > 0.999.
    a, b = ours["instances"], theirs["instances"]
    assert len(a) == len(b) > 0
    assert sorted(a.pred_classes.tolist()) == sorted(b.pred_classes.tolist())
    masks_a, masks_b = a.pred_masks.flatten(1).float(), b.pred_masks.flatten(1).float()
    intersection = masks_a @ masks_b.T
    union = masks_a.sum(1)[:, None] + masks_b.sum(1)[None] - intersection
    iou = intersection / union.clamp(min=1)
    iou[a.pred_classes[:, None] != b.pred_classes[None]] = 0
    assert (iou.max(1).values > 0.999).all() and (iou.max(0).values > 0.999).all()


def test_one_image_is_padded_as_imagelist_pads_a_batch(exported):
    """The proposal network pads one image itself (so that export keeps its size symbolic)."""
    _, model, _ = exported
    network = model.proposal_network.network
    image = torch.randint(0, 256, (3, 101, 70), dtype=torch.uint8)
    ours = network.preprocess_image([{"image": image}])
    normalised = (image - network.pixel_mean) / network.pixel_std
    reference = ImageList.from_tensors([normalised], network.size_divisibility)
    assert ours.tensor.shape == (1, 3, 128, 96)
    assert torch.equal(ours.tensor, reference.tensor)
    assert ours.image_sizes == reference.image_sizes == [(101, 70)]


def test_onnx_predictor_reads_the_exported_config(exported):
    cfg, _, onnx_model = exported
    predictor = ONNXPredictor(onnx_model.path, opts=OPTS, num_threads=1)
    assert predictor.vocabulary == list(cfg.MODEL.MASKCLIP.VOCABULARY)
    assert predictor.model.overlap_threshold == 0.0
    assert predictor.cfg.INPUT.MIN_SIZE_TEST == cfg.INPUT.MIN_SIZE_TEST


def test_bad_inputs_are_refused_with_clear_errors(exported, tmp_path):
    cfg, model, onnx_model = exported
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such ONNX file"):
        ONNXRuntimeMaskCLIP(str(tmp_path / "missing.onnx"))
    small = {"image": torch.zeros((3, MIN_IMAGE_SIDE - 1, 100), dtype=torch.uint8)}
    with pytest.raises(ValueError, match=f"both sides >= {MIN_IMAGE_SIDE}"):
        onnx_model.predict([small], model.text_encoder.encode_vocabulary(["cat"]))
    image = {"image": torch.zeros((3, 100, 100), dtype=torch.uint8)}
    with pytest.raises(ValueError, match=r"class_embeddings must be \(C, 64\)"):
        onnx_model.predict([image], torch.ones(2, 32))
    with pytest.raises(ValueError, match="uint8"):
        onnx_model.predict([{"image": image["image"].float()}], torch.ones(2, 64))
    with pytest.raises(RuntimeError, match="inference-only"):
        onnx_model.train()


def test_export_tool_never_overwrites_an_input(tmp_path, capsys):
    tool = load_script("tools/export_onnx.py")

    config = tmp_path / "model.onnx"  # a config file named like the output
    config.write_text(f'_BASE_: "{TINY}"\n')
    before = config.read_text()
    assert tool.main(["--config-file", str(config), "--output", str(config)]) == 2
    assert "is an input of the export" in capsys.readouterr().err
    assert config.read_text() == before
    assert tool.main(["--config-file", TINY, "--output", str(tmp_path / "model.pt")]) == 2
    assert "must name an .onnx file" in capsys.readouterr().err


def test_demo_onnx_backend_draws_the_same_segments(exported, tmp_path, capsys):
    demo = load_script("demo/demo.py")

    from PIL import Image

    _, _, onnx_model = exported
    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    common = ["--input", str(photo), "--task", "all", "--vocab", "cat; sky; grass; wall", "--opts", *OPTS]
    torch.manual_seed(0)  # the random tiny weights of the exported model
    np.random.seed(0)  # the Visualizer jitters thing colours with NumPy's generator
    assert demo.main(["--config-file", TINY, "--output", str(tmp_path / "pytorch"), *common]) == 0
    np.random.seed(0)
    assert demo.main(["--backend", "onnx", "--onnx-model", onnx_model.path,
                      "--output", str(tmp_path / "onnx"), *common]) == 0
    records = [json.load(open(tmp_path / backend / "chelsea.json")) for backend in ("pytorch", "onnx")]
    for task in ("panoptic", "semantic"):  # instances: see the test above
        ours, theirs = (
            sorted(json.dumps({k: v for k, v in s.items() if k != "score"}) for s in r[task])
            for r in records
        )
        assert theirs == ours and ours, task
    assert any(records[0]["panoptic"])
    for task in ("panoptic", "semantic"):  # instances are drawn in score order, see above
        drawn = [np.asarray(Image.open(tmp_path / b / f"chelsea_{task}.png")) for b in ("pytorch", "onnx")]
        assert np.array_equal(*drawn), task

    assert demo.main(["--backend", "onnx", "--onnx-model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx not found; create it with tools/export_onnx.py" in capsys.readouterr().err


def test_export_tool_check_says_ok_for_a_correct_export(exported, capsys):
    """The self-check of tools/export_onnx.py on a correct export: every output within its
    relative tolerance, the segments' agreement reported, no "error"."""
    tool = load_script("tools/export_onnx.py")

    cfg, model, onnx_model = exported
    assert tool.compare(cfg, model, onnx_model.path) is True
    out = capsys.readouterr()
    assert not any(line.startswith("error") for line in out.err.splitlines()) and "TOO LARGE" not in out.out
    assert "ok: ONNX Runtime's outputs equal PyTorch's up to float32 rounding" in out.out
    assert "of pixels in a segment of the same class" in out.out


def test_int8_graph_runs_like_the_float32_one_within_int8_bounds(exported, capsys):
    """ONNX Runtime's dynamic int8 quantization (maskclip_d2/quantization.py): a smaller file
    that ONNXPredictor runs with the export's config and text graph; its outputs within the
    int8 tolerances of PyTorch float32, and the tool's check says ok."""
    from maskclip_d2.export_check import compare_outputs
    from maskclip_d2.quantization import INT8_RELATIVE_TOLERANCES, int8_path, quantize_int8

    tool = load_script("tools/export_onnx.py")

    cfg, model, onnx_model = exported
    path = quantize_int8(onnx_model.path, int8_path(onnx_model.path))
    assert path.endswith(".int8.onnx")
    import onnx

    ops = [n.op_type for n in onnx.load(path).graph.node]
    # the linear layers' weights (written as Transpose + MatMul by torch.onnx) are int8 now
    assert ops.count("MatMulInteger") >= 30, ops.count("MatMulInteger")
    int8 = ONNXRuntimeMaskCLIP(path, num_threads=1)
    # the vocabulary stored at export (a fresh load: other tests re-set the fixture's models')
    assert int8.vocabulary == ONNXRuntimeMaskCLIP(onnx_model.path, num_threads=1).vocabulary
    inputs = _photo_inputs(cfg, model, "astronaut")
    vocabulary = model.text_encoder.encode_vocabulary(int8.vocabulary)
    with torch.no_grad():
        ours = model.predict([inputs], vocabulary)
    ours["mask_logits"] = ours["refined_masks"][-1]
    report = compare_outputs(ours, int8.predict([inputs], vocabulary), INT8_RELATIVE_TOLERANCES)
    assert all(r["within"] for r in report.values()), report
    assert report["mask_logits"]["max_abs"] > 0  # really another computation
    assert tool.compare(cfg, model, path, INT8_RELATIVE_TOLERANCES, "int8 quantization") is True
    assert "ok: ONNX Runtime's outputs equal PyTorch's up to int8 quantization" in capsys.readouterr().out
    with pytest.raises(ValueError, match="is the graph to quantize"):
        quantize_int8(path, path)


@pytest.mark.parametrize("opts, missing, message", [
    (["MODEL.MASKCLIP.INFERENCE_DTYPE", "bfloat16"], None,
     "MODEL.MASKCLIP.INFERENCE_DTYPE is 'bfloat16': the ONNX export is float32"),
    (["MODEL.MASKCLIP.MODE", "baseline"], None, "MODEL.MASKCLIP.MODE 'baseline' does not export"),
    (["MODEL.MASKCLIP.PROPOSAL_NETWORK", "sam"], None,
     "proposals from 'sam' do not export: MODEL.MASKCLIP.PROPOSAL_NETWORK must be 'mask2former'"),
    ([], "onnxruntime.quantization", "--int8 needs ONNX Runtime's quantization (onnxruntime.quantization)"),
])
def test_export_tool_checks_its_prerequisites_before_building_the_model(tmp_path, capsys, monkeypatch,
                                                                         opts, missing, message):
    tool = load_script("tools/export_onnx.py")

    if missing:
        monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: import fails
    output = tmp_path / "model.onnx"
    # Building this model would fail (no such CLIP file): the refusal must come first.
    rc = tool.main(["--config-file", TINY, "--output", str(output), "--int8",
                    "--opts", *opts, "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert os.listdir(tmp_path) == []


def test_a_graph_over_the_size_limit_keeps_its_weights_in_a_data_file_beside_it(exported, tmp_path, monkeypatch):
    """Graphs whose weights exceed deploy.EXTERNAL_DATA_BYTES (e.g. with a ViT-H/14 image tower,
    over protobuf's 2 GB limit on one file) are saved with ONNX external data in
    NAME.onnx.data, named by its final name (no temporary left behind), and run the same;
    the int8 quantization takes such a graph through external data too."""
    import onnx
    import onnxruntime as ort

    from maskclip_d2 import deploy, quantization

    cfg, model, onnx_model = exported
    import clip

    tokens = clip.tokenize(["a", "photo of a cat"], context_length=model.text_encoder.context_length).long()
    program = deploy._to_onnx(
        deploy._TextGraph(model.text_encoder), (tokens,),
        ({0: torch.export.Dim("texts", min=1)},), ("tokens",), ("text_embeddings",), False)
    inline, external = str(tmp_path / "inline.onnx"), str(tmp_path / "external.onnx")
    deploy._save(program, inline, {})
    monkeypatch.setattr(deploy, "EXTERNAL_DATA_BYTES", 0)
    deploy._save(program, external, {"maskclip_d2.test": "kept"})
    assert sorted(os.listdir(tmp_path)) == ["external.onnx", "external.onnx.data", "inline.onnx"]
    assert os.path.getsize(external) < os.path.getsize(inline) / 10  # the weights are beside it
    graph = onnx.load(external, load_external_data=False)
    assert {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"} \
        == {"external.onnx.data"}
    assert {p.key: p.value for p in graph.metadata_props}["maskclip_d2.test"] == "kept"
    outputs = [ort.InferenceSession(p).run(None, {"tokens": tokens[1:].numpy()})[0] for p in (inline, external)]
    np.testing.assert_array_equal(outputs[0], outputs[1])

    # int8 through the large-graph path equals int8 through the small one
    image_graph = onnx_model.path
    small = quantization.quantize_int8(image_graph, str(tmp_path / "small.int8.onnx"))
    monkeypatch.setattr(quantization, "LARGE_GRAPH_BYTES", 0)
    large = quantization.quantize_int8(image_graph, str(tmp_path / "large.int8.onnx"))
    from onnx import numpy_helper

    graphs = [onnx.load(path).graph for path in (small, large)]
    assert [(n.op_type, list(n.input)) for n in graphs[0].node] == [(n.op_type, list(n.input)) for n in graphs[1].node]
    weights = [{t.name: numpy_helper.to_array(t) for t in g.initializer} for g in graphs]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left
