"""bfloat16 inference (MODEL.MASKCLIP.INFERENCE_DTYPE, --dtype): the networks really run in
bfloat16, what comes out of them is float32 and close to the float32 model's, training and the
default stay float32; the key reaches the model from the Predictor, the demo and train_net.py.

Bounds here are for tiny random models; the paper-size bounds (mask-feature cosine >= 0.999,
class argmax >= 99% of masks) are measured by ``benchmarks/benchmark_model.py --dtypes``."""
from pathlib import Path

import pytest
import skimage.data
import torch
import torch.nn.functional as F

from maskclip_d2 import Predictor
from maskclip_d2.modeling import MaskCLIPVisualEncoder
from maskclip_d2.modeling.inference_dtype import check_inference_dtype, inference_autocast

from helpers.tiny_clip import images_for, random_masks, randomise_rma_weights, tiny_clip
from helpers.tiny_maskclip import TINY, tiny_cfg, tiny_model

REPO = Path(__file__).resolve().parents[2]
PHOTOS = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]


def first_dtype_of(module):
    """A forward hook recording the dtype of ``module``'s output."""
    seen = []

    def hook(_, __, output):
        seen.append((output[0] if isinstance(output, (tuple, list)) else output).dtype)

    return seen, module.register_forward_hook(hook)


def predictions(model, inputs):
    """``predict``'s outputs and the mask features handed to the classifier."""
    features = []
    classify = model.text_encoder.classify

    def capture(f, embeddings, no_object=False):
        features.append(f)
        return classify(f, embeddings, no_object=no_object)

    model.text_encoder.classify = capture
    try:
        with torch.no_grad():
            out = model.predict(inputs, model.text_encoder.encode_vocabulary(model.vocabulary))
    finally:
        model.text_encoder.classify = classify
    out["features"] = features[0]
    return out


def photo_inputs(model):
    predictor = Predictor(tiny_cfg(), model=model)
    return [predictor.inputs(photo) for photo in PHOTOS]


def test_bfloat16_runs_the_networks_in_bfloat16_and_hands_on_float32():
    model = tiny_model("MODEL.MASKCLIP.INFERENCE_DTYPE", "bfloat16")
    assert model.inference_dtype == "bfloat16"
    conv_dtypes, h1 = first_dtype_of(model.proposal_network.network.backbone.stem.conv1)
    block_dtypes, h2 = first_dtype_of(model.encoder.visual.transformer.resblocks[0].mlp)
    try:
        inputs = photo_inputs(model)[:1]
        out = predictions(model, inputs)
        assert conv_dtypes == [torch.bfloat16] and block_dtypes == [torch.bfloat16]
        conv = model.proposal_network.network.backbone.stem.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        for key in ("class_logits", "mask_logits", "objectness", "features"):
            assert out[key].dtype == torch.float32, key
        assert all(m.dtype == torch.float32 for m in out["refined_masks"])
        # training is float32 whatever the key says
        conv_dtypes.clear(), block_dtypes.clear()
        model.train()
        model.predict(inputs, model.text_encoder.encode_vocabulary(model.vocabulary))
        assert conv_dtypes == [torch.float32] and block_dtypes == [torch.float32]
    finally:
        h1.remove(), h2.remove()


@pytest.mark.parametrize("bfloat16_pixel_decoder", [True, False])
def test_pixel_decoder_runs_bfloat16_only_when_the_key_says_and_samples_in_float32(bfloat16_pixel_decoder):
    """MODEL.SEM_SEG_HEAD.PIXEL_DECODER_BFLOAT16: the deformable encoder's projections in
    bfloat16 under bfloat16 inference (True) or float32 as Mask2Former (False); its bilinear
    sampling (grid_sample) reads float32 either way; float16 autocast keeps it float32."""
    import maskclip_d2.modeling.proposals.pixel_decoder.ms_deform_attn as ms_deform_attn

    model = tiny_model("MODEL.MASKCLIP.INFERENCE_DTYPE", "bfloat16",
                       "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_BFLOAT16", str(bfloat16_pixel_decoder))
    decoder = model.proposal_network.network.sem_seg_head.pixel_decoder
    layer = decoder.transformer.encoder.layers[0]
    projection_dtypes, hook = first_dtype_of(layer.self_attn.value_proj)
    norm_dtypes, norm_hook = first_dtype_of(layer.norm2)  # the residual stream, normalised
    sampled = []
    grid_sample = ms_deform_attn.F.grid_sample

    def recording(value, grid, *args, **kwargs):
        out = grid_sample(value, grid, *args, **kwargs)
        sampled.append(out.dtype)
        return out

    ms_deform_attn.F.grid_sample = recording
    try:
        predictions(model, photo_inputs(model)[:1])
        expected = torch.bfloat16 if bfloat16_pixel_decoder else torch.float32
        assert projection_dtypes == [expected]
        assert sampled and set(sampled) == {torch.float32}
        assert norm_dtypes == [torch.float32]  # the residual stream stays float32 on CPU too
        # float16 autocast (Mask2Former's mixed precision): float32, as the reference
        projection_dtypes.clear()
        features = model.proposal_network.network.backbone(torch.rand(1, 3, 64, 96))
        with torch.autocast("cpu", dtype=torch.float16):
            decoder.forward_features(features)
        assert projection_dtypes == [torch.float32]
    finally:
        ms_deform_attn.F.grid_sample = grid_sample
        hook.remove(), norm_hook.remove()


def test_float32_default_runs_no_autocast():
    model = tiny_model()
    assert model.inference_dtype == "float32"
    block_dtypes, hook = first_dtype_of(model.encoder.visual.transformer.resblocks[0].mlp)
    try:
        predictions(model, photo_inputs(model)[:1])
    finally:
        hook.remove()
    assert block_dtypes == [torch.float32]


def test_bfloat16_model_agrees_with_float32():
    """The tiny model on three photographs: mask features by cosine, class argmax per mask."""
    model = tiny_model()
    inputs = photo_inputs(model)
    expected = predictions(model, inputs)
    model.inference_dtype = "bfloat16"
    out = predictions(model, inputs)
    cosine = F.cosine_similarity(out["features"], expected["features"], dim=-1)
    assert cosine.min() >= 0.999
    agree = out["class_logits"].argmax(-1) == expected["class_logits"].argmax(-1)
    assert agree.float().mean() >= 0.9
    # the proposals: the same pixels inside each mask, but for a few near zero
    inside = (out["mask_logits"] > 0) == (expected["mask_logits"] > 0)
    assert inside.float().mean() >= 0.99
    # back to float32: the same outputs as before, to the bit (weights as built again)
    model.inference_dtype = "float32"
    again = predictions(model, inputs)
    for key in ("class_logits", "mask_logits", "objectness", "features"):
        assert torch.equal(again[key], expected[key]), key
    conv = model.proposal_network.network.backbone.stem.conv1.weight
    assert conv.is_contiguous()


def test_bfloat16_encoder_agrees_with_float32():
    """The MaskCLIP Visual Encoder with RMA on masks of every kind (full, empty, one pixel,
    blobs): mask features by cosine, refined masks within a few hundredths of their range."""
    model = tiny_clip(128, 8, 64, 3)
    encoder = MaskCLIPVisualEncoder(model.visual)
    randomise_rma_weights(encoder, std=0.1)
    images, masks = images_for(model), random_masks(2, 64, 8)
    with torch.no_grad():
        expected = encoder(images, masks)
        with inference_autocast(torch.device("cpu"), "bfloat16"):
            out = encoder(images, masks)
    cosine = F.cosine_similarity(out["features"].float(), expected["features"], dim=-1)
    assert cosine.min() >= 0.999
    for refined, reference in zip(out["masks"], expected["masks"]):
        assert (refined.float() - reference).abs().max() <= 0.03 * masks.abs().max()


def test_bad_dtype_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"INFERENCE_DTYPE \(--dtype\) must be one of \('float32', "
                                         r"'bfloat16'\), got 'float16'"):
        check_inference_dtype("float16")
    with pytest.raises(ValueError, match="INFERENCE_DTYPE"):
        tiny_model("MODEL.MASKCLIP.INFERENCE_DTYPE", "fp16")
    with pytest.raises(ValueError, match="got 'half'"):
        Predictor(tiny_cfg(), dtype="half")


def test_predictor_dtype_sets_the_key_and_the_model():
    predictor = Predictor(tiny_cfg(), dtype="bfloat16")
    assert predictor.cfg.MODEL.MASKCLIP.INFERENCE_DTYPE == "bfloat16"
    assert predictor.model.inference_dtype == "bfloat16"
    again = Predictor(predictor.cfg, model=predictor.model, dtype="float32")
    assert again.model.inference_dtype == "float32"


def test_demo_and_train_net_dtype_flags(tmp_path):
    from helpers.scripts import load_script

    demo = load_script("demo/demo.py")
    train_net = load_script("train_net.py")

    args = demo.get_parser().parse_args(["--config-file", str(TINY), "--dtype", "bfloat16"])
    assert demo.setup_cfg(args).MODEL.MASKCLIP.INFERENCE_DTYPE == "bfloat16"
    args = demo.get_parser().parse_args(["--config-file", str(TINY)])
    assert demo.setup_cfg(args).MODEL.MASKCLIP.INFERENCE_DTYPE == "float32"
    with pytest.raises(SystemExit):
        demo.get_parser().parse_args(["--config-file", str(TINY), "--dtype", "int4"])

    args = train_net.get_parser().parse_args(
        ["--config-file", str(TINY), "--eval-only", "--dtype", "bfloat16", "OUTPUT_DIR", str(tmp_path)]
    )
    assert train_net.setup(args).MODEL.MASKCLIP.INFERENCE_DTYPE == "bfloat16"


def test_onnx_export_refuses_a_bfloat16_model_with_the_fix():
    from maskclip_d2.deploy import check_exportable

    with pytest.raises(ValueError, match="export with MODEL.MASKCLIP.INFERENCE_DTYPE float32"):
        check_exportable(tiny_model("MODEL.MASKCLIP.INFERENCE_DTYPE", "bfloat16"))
    check_exportable(tiny_model())
