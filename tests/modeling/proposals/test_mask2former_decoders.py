"""Shapes and contracts of the pixel decoder, the masked-attention decoder and the proposal network."""
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

import maskclip_d2  # noqa: F401  (registers the meta-architecture)
from maskclip_d2.config import add_mask2former_config
from maskclip_d2.modeling.proposals.pixel_decoder import build_pixel_decoder
from maskclip_d2.modeling.proposals.transformer_decoder import build_transformer_decoder
from maskclip_d2.modeling.proposals.transformer_decoder.attention import MultiHeadAttention
from helpers.tiny_mask2former import TinyConvBackbone, shapes_batch, tiny_cfg


def test_config_defaults_are_mask2former_r50_panoptic():
    cfg = add_mask2former_config(get_cfg())
    mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    assert (mf.NUM_OBJECT_QUERIES, mf.HIDDEN_DIM, mf.NHEADS, mf.DIM_FEEDFORWARD) == (100, 256, 8, 2048)
    assert mf.DEC_LAYERS == 10 and not mf.PRE_NORM and not mf.ENFORCE_INPUT_PROJ
    assert (mf.TRAIN_NUM_POINTS, mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO) == (12544, 3.0, 0.75)
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT) == (2.0, 5.0, 5.0, 0.1)
    assert head.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder" and head.MASK_DIM == 256
    assert head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES == ["res3", "res4", "res5"]
    assert head.TRANSFORMER_ENC_LAYERS == 6
    assert add_mask2former_config(cfg) is cfg  # idempotent


def test_pixel_decoder_shapes():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    backbone = TinyConvBackbone()
    decoder = build_pixel_decoder(cfg, backbone.output_shape())
    features = backbone(torch.randn(2, 3, 64, 96))
    mask_features, levels = decoder.forward_features(features)
    assert mask_features.shape == (2, 32, 16, 24)  # MASK_DIM at stride 4
    # res5, res4, res3 encoded, coarsest first, CONVS_DIM channels
    assert [tuple(x.shape) for x in levels] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]


def test_transformer_decoder_outputs_and_deep_supervision():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    decoder = build_transformer_decoder(cfg, in_channels=32, num_classes=5)
    levels = [torch.randn(2, 32, s, s) for s in (2, 4, 8)]
    out = decoder(levels, torch.randn(2, 32, 16, 16))
    assert out["pred_logits"].shape == (2, 8, 6)  # 8 queries, 5 classes + no-object
    assert out["pred_masks"].shape == (2, 8, 16, 16)
    # DEC_LAYERS = 4 predictions: 3 layers + the learnable queries' own; the last 1 is not aux
    assert decoder.num_layers == 3 and len(out["aux_outputs"]) == 3
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 8, 6) and aux["pred_masks"].shape == (2, 8, 16, 16)


def test_attention_mask_covers_the_mask_and_falls_back_to_everything_when_empty():
    cfg = tiny_cfg()
    decoder = build_transformer_decoder(cfg, in_channels=32, num_classes=1)
    mask_features = torch.zeros(1, 32, 4, 4)
    mask_features[0, 0, :2] = 1.0  # channel 0 is on in the top half
    mask_features[0, 0, 2:] = -1.0
    with torch.no_grad():
        decoder.mask_embed.layers[-1].weight.zero_()
        decoder.mask_embed.layers[-1].bias.zero_()
        decoder.mask_embed.layers[-1].bias[0] = 5.0  # every query's mask = 5 * channel 0
    queries = torch.randn(1, 8, 32)
    _, masks, attn = decoder.forward_prediction_heads(queries, mask_features, (4, 4))
    assert attn.shape == (1, 1, 8, 16) and attn.dtype == torch.bool
    top_half = torch.arange(16) < 8
    assert torch.equal(attn[0, 0], top_half.expand(8, 16))
    # negate: no pixel above threshold -> the query attends to all pixels
    _, _, attn = decoder.forward_prediction_heads(queries, -mask_features - 10, (4, 4))
    assert attn.all()


def test_attention_equals_torch_multihead_attention_with_its_weights():
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4)
    reference = nn.MultiheadAttention(16, 4, batch_first=True)
    reference.load_state_dict(ours.state_dict())  # same parameter names and shapes
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    allowed = torch.rand(2, 1, 5, 7) > 0.4
    allowed[..., 0] = True
    expected, _ = reference(q, k, v, attn_mask=(~allowed).expand(2, 4, 5, 7).reshape(8, 5, 7))
    torch.testing.assert_close(ours(q, k, v, attn_mask=allowed), expected, atol=1e-5, rtol=1e-5)


def test_propose_and_inference_outputs():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    batch = shapes_batch()[:2]
    batch[1]["height"], batch[1]["width"] = 96, 80  # output resolution differs from input
    with torch.no_grad():
        images = model.preprocess_image(batch).tensor
        mask_logits, objectness_logits = model.propose(images)
        raw = model.predict(images)
        results = model(batch)
    assert mask_logits.shape == (2, 8, 16, 16) and objectness_logits.shape == (2, 8)
    torch.testing.assert_close(objectness_logits.sigmoid(), raw["pred_logits"].softmax(-1)[..., 0])
    assert results[0]["proposals"]["mask_logits"].shape == (8, 64, 64)
    assert results[1]["proposals"]["mask_logits"].shape == (8, 96, 80)
    objectness = results[0]["proposals"]["objectness"]
    assert objectness.shape == (8,) and ((objectness >= 0) & (objectness <= 1)).all()


def test_training_returns_weighted_losses_with_deep_supervision():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    losses = model(shapes_batch())
    expected = {"loss_ce", "loss_mask", "loss_dice"}
    expected |= {f"{name}_{i}" for name in ("loss_ce", "loss_mask", "loss_dice") for i in range(3)}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.sem_seg_head.pixel_decoder.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_default_config_builds_resnet50_proposal_network():
    cfg = add_mask2former_config(get_cfg())
    cfg.merge_from_file("configs/coco/proposals/class_agnostic_mask2former_R50.yaml")
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert type(model.backbone).__name__ == "ResNet"
    assert model.sem_seg_head.predictor.num_layers == 9
    assert len(model.sem_seg_head.pixel_decoder.transformer.encoder.layers) == 6
    # parameter names of Mask2Former's checkpoints (its class head has another shape)
    keys = set(model.state_dict())
    for key in (
        "sem_seg_head.pixel_decoder.input_proj.2.1.weight",
        "sem_seg_head.pixel_decoder.transformer.level_embed",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.norm2.bias",
        "sem_seg_head.pixel_decoder.adapter_1.norm.weight",
        "sem_seg_head.pixel_decoder.layer_1.weight",
        "sem_seg_head.pixel_decoder.mask_features.bias",
        "sem_seg_head.predictor.transformer_cross_attention_layers.8.multihead_attn.in_proj_weight",
        "sem_seg_head.predictor.transformer_self_attention_layers.8.self_attn.out_proj.weight",
        "sem_seg_head.predictor.transformer_ffn_layers.8.linear2.weight",
        "sem_seg_head.predictor.query_feat.weight",
        "sem_seg_head.predictor.query_embed.weight",
        "sem_seg_head.predictor.level_embed.weight",
        "sem_seg_head.predictor.decoder_norm.weight",
        "sem_seg_head.predictor.mask_embed.layers.2.bias",
        "sem_seg_head.predictor.class_embed.weight",
    ):
        assert key in keys, key
    assert model.state_dict()["sem_seg_head.predictor.class_embed.weight"].shape == (2, 256)
    with torch.no_grad():
        mask_logits, objectness_logits = model.propose(torch.randn(1, 3, 64, 64))
    assert mask_logits.shape == (1, 100, 16, 16) and objectness_logits.shape == (1, 100)
