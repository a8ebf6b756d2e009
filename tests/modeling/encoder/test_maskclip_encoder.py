"""MaskCLIPVisualEncoder: Mask Class Tokens (Eq. 1-2), RMA (Eq. 3-4), mask refinement (Eq. 5).

Every CLIP here is a tiny random one built in-process, of OpenAI's family (``clip.model.CLIP``)
or of OpenCLIP's (``open_clip.create_model`` with tiny configs: layer scale, GELU, head width
32, a non-square grid, no ln_pre, LayerNorm after pooling); the references are written from the
paper's formulas: ``dense_reference`` (the authors' dense construction, all masks at once) and
``per_mask_reference`` below (one mask at a time, CLIP's own blocks for the image tokens).
"""
import copy
import math

import clip
import pytest
import torch
import torch.nn.functional as F
from clip.model import CLIP

from helpers.openclip_models import tiny_openclip
from helpers.tiny_clip import CLIP_SIZES, images_for, random_masks, randomise_rma_weights, tiny_clip
from maskclip_d2.modeling import MaskCLIPVisualEncoder, mask_visibility
from maskclip_d2.modeling.encoder.dense_reference import dense_attention_mask, dense_reference_forward
from maskclip_d2.modeling.encoder.maskclip_encoder import default_rma_layers, pixels_in_mask

# OpenCLIP towers: (image size, patch, width, layers, options of tiny_openclip).
OPENCLIP_SIZES = {
    # layer scale, GELU, 2 heads of 32 channels
    "openclip-ls-w64-p16-r64-l4": (64, 16, 64, 4, dict(ls_init_value=0.3)),
    # 6 x 8 grid of 8-pixel patches, QuickGELU, no ln_pre, LayerNorm after pooling
    "openclip-48x64-w64-p8-l3": (
        (48, 64), 8, 64, 3, dict(quick_gelu=True, no_ln_pre=True, final_ln_after_pool=True),
    ),
}


def any_clip(name):
    if name in CLIP_SIZES:
        return tiny_clip(*CLIP_SIZES[name])
    size, patch, width, layers, options = OPENCLIP_SIZES[name]
    return tiny_openclip(size, patch, width, layers, **options)


@pytest.fixture(params=list(CLIP_SIZES) + list(OPENCLIP_SIZES), scope="module")
def clip_model(request):
    return any_clip(request.param)


@pytest.fixture(scope="module")
def small_clip():
    return tiny_clip(*CLIP_SIZES["w128-p8-r64-l3"])


@pytest.fixture(params=["w128-p8-r64-l3", "openclip-48x64-w64-p8-l3"], scope="module")
def small_clip_any_family(request):
    """A CLIP with 8-pixel patches: OpenAI's (64 x 64) or OpenCLIP's (48 x 64)."""
    return any_clip(request.param)


def per_mask_reference(encoder, image, mask):
    """One image (3, R, R) and ONE mask logit map (R, R), from Eq. 1-5 as written.

    The class and patch tokens go through CLIP's own ResidualAttentionBlocks (they never see
    the mask token); the mask class token gets its attention logits written out per head:
    the class token at q.k / sqrt(d); patch n at -inf if the mask has no pixel in it (Eq. 2),
    else q.k / sqrt(d) without RMA, (q.k + A'[n]) / (2 sqrt(d)) with RMA (Eq. 4), where
    A'[n] = sum over the head's channels of LN(T_MP[n]) * Km(T_IM[n]) (Eq. 3). After an RMA
    layer, logit(M_r) = logit(M_c) + f_r(q / sqrt(d) * k_n) unfolded per patch (Eq. 5).
    OpenCLIP blocks scale both residual branches by their layer scales (ls_1, ls_2).
    Returns the feature (E,) and the refined masks of every RMA layer.
    """
    visual = encoder.visual
    p, D, H = encoder.patch_size, encoder.width, encoder.num_heads
    d = D // H
    rows, cols = mask.shape[0] // p, mask.shape[1] // p
    tokens = visual.conv1(image[None]).flatten(2)[0].T  # (N, D)
    tokens = torch.cat([visual.class_embedding[None], tokens]) + visual.positional_embedding
    tokens = visual.ln_pre(tokens)  # (1 + N, D)
    mask_token = tokens[0].clone()
    refined = []
    for i, block in enumerate(visual.transformer.resblocks, start=1):
        Wq, Wk, Wv = block.attn.in_proj_weight.chunk(3)
        bq, bk, bv = block.attn.in_proj_bias.chunk(3)
        h = block.ln_1(tokens)
        keys, values = h @ Wk.T + bk, h @ Wv.T + bv  # (1 + N, D)
        q = block.ln_1(mask_token) @ Wq.T + bq  # (D,)

        visible = [
            bool((torch.sigmoid(mask.double()[r * p:(r + 1) * p, c * p:(c + 1) * p])
                  >= encoder.mask_threshold).any())
            for r in range(rows) for c in range(cols)
        ]
        rma = encoder.rma_layers[str(i)] if str(i) in encoder.rma_layers else None
        if rma is not None:
            T_MP = F.conv2d(torch.tanh(mask)[None, None], rma.mask_patch_embed.weight,
                            rma.mask_patch_embed.bias, stride=p)[0].flatten(1).T  # (N, D)
            q_m = rma.mask_query_norm(T_MP)
            k_m = rma.mask_key_proj(h[1:])

        out = torch.empty(D)
        for head in range(H):
            s = slice(head * d, (head + 1) * d)
            logits = torch.empty(1 + rows * cols)
            logits[0] = q[s] @ keys[0, s] / math.sqrt(d)
            for n in range(rows * cols):
                if not visible[n]:
                    logits[1 + n] = float("-inf")
                elif rma is None:
                    logits[1 + n] = q[s] @ keys[1 + n, s] / math.sqrt(d)
                else:
                    a_prime = (q_m[n, s] * k_m[n, s]).sum()
                    logits[1 + n] = (q[s] @ keys[1 + n, s] + a_prime) / (2 * math.sqrt(d))
            out[s] = logits.softmax(0) @ values[:, s]

        if rma is not None:
            new_mask = mask.clone()
            for n in range(rows * cols):
                r, c = divmod(n, cols)
                residual = rma.refine_head(q / math.sqrt(d) * keys[1 + n]).reshape(p, p)
                new_mask[r * p:(r + 1) * p, c * p:(c + 1) * p] += residual
            mask = new_mask
            refined.append(mask)

        ls_1 = getattr(block, "ls_1", lambda t: t)  # OpenCLIP's layer scales
        ls_2 = getattr(block, "ls_2", lambda t: t)
        mask_token = mask_token + ls_1(block.attn.out_proj(out))
        mask_token = mask_token + ls_2(block.mlp(block.ln_2(mask_token)))
        if block.attn.batch_first:  # CLIP's own block: OpenCLIP's (1, L, D), OpenAI's (L, 1, D)
            tokens = block(tokens[None])[0]
        else:
            tokens = block(tokens[:, None])[:, 0]
    return visual.ln_post(mask_token) @ visual.proj, refined


# ---- Mask Class Tokens ------------------------------------------------------------------------


def test_full_image_mask_gives_clip_image_embedding(clip_model):
    encoder = MaskCLIPVisualEncoder(clip_model.visual, mode="mask_tokens")
    images = images_for(clip_model)
    masks = random_masks(2, encoder.input_size, encoder.patch_size)
    with torch.no_grad():
        out = encoder(images, masks)
        expected = clip_model.encode_image(images)
    assert out["features"].shape == (2, masks.shape[1], expected.shape[1])
    assert out["masks"] == []
    assert (out["features"][:, 0] - expected).abs().max() < 1e-4
    # A mask that is not the whole image reads something else.
    assert (out["features"][:, 1] - expected).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["mask_tokens", "rma"])
def test_mask_feature_ignores_other_masks(small_clip_any_family, mode):
    model = small_clip_any_family
    encoder = MaskCLIPVisualEncoder(model.visual, mode=mode, refine_chunk_size=3)
    if mode == "rma":
        randomise_rma_weights(encoder)
    images = images_for(model)
    masks = random_masks(2, encoder.input_size, 8)
    M = masks.shape[1]
    with torch.no_grad():
        full = encoder(images, masks)
        order = torch.randperm(M, generator=torch.Generator().manual_seed(0))
        permuted = encoder(images, masks[:, order])
        subset = encoder(images, masks[:, 2:5])
        single = encoder(images, masks[:, 4:5])
        added = encoder(images, torch.cat([masks, -masks, masks.flip(-1)], dim=1))

    def close(a, b):
        return torch.allclose(a, b, atol=1e-5, rtol=1e-5)

    assert close(permuted["features"], full["features"][:, order])
    assert close(subset["features"], full["features"][:, 2:5])
    assert close(single["features"], full["features"][:, 4:5])
    assert close(added["features"][:, :M], full["features"])
    assert len(full["masks"]) == len(encoder.rma_layers)  # 0 in mask_tokens mode
    for layer in range(len(full["masks"])):
        assert close(permuted["masks"][layer], full["masks"][layer][:, order])
        assert close(subset["masks"][layer], full["masks"][layer][:, 2:5])
        assert close(added["masks"][layer][:, :M], full["masks"][layer])


def test_visibility_equals_eq2_per_pixel():
    patch, R = 8, 32
    masks = random_masks(3, R, patch, seed=5)
    blocked = dense_attention_mask(masks, patch, 0.5, num_heads=1)  # (B, L, L), Eq. 1
    N, M = (R // patch) ** 2, masks.shape[1]
    visible = mask_visibility(masks, patch, 0.5)
    assert visible.shape == (3, M, N) and visible.dtype == torch.bool
    assert torch.equal(visible, ~blocked[:, 1 + N:, 1:1 + N])
    # Spelled out from Eq. 2 for a few pairs: the one-pixel and sub-patch masks see 1 and 4.
    assert visible[:, 0].all() and not visible[:, 2].any()
    assert (visible[:, 3].sum(-1) == 1).all() and (visible[:, 4].sum(-1) == 4).all()
    # The rest of Eq. 1: mask tokens see the class token, never mask tokens; image and class
    # tokens see each other and never mask tokens.
    assert not blocked[:, 1 + N:, 0].any() and blocked[:, :, 1 + N:].all()
    assert not blocked[:, :1 + N, :1 + N].any()


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_visibility_thresholds_in_any_dtype(dtype, threshold):
    torch.manual_seed(0)
    logits = (torch.randn(2, 6, 48, 48) * 3).to(dtype)
    logits[0, 1] = -20.0  # empty
    visible = mask_visibility(logits, 16, threshold)
    expected = ~dense_attention_mask(logits.float(), 16, threshold, num_heads=1)[:, 10:, 1:10]
    assert torch.equal(visible, expected)
    assert not visible[0, 1].any()
    assert mask_visibility(logits[:, :0], 16, threshold).shape == (2, 0, 9)

    # Pixel decisions right at the threshold: the representable logits next to logit(t),
    # decided in float64 (where sigmoid itself would round 0.5 - 1e-45 up to 0.5).
    exact = math.log(threshold / (1 - threshold))
    bound = torch.tensor(exact).to(dtype)
    edge = [bound]
    for _ in range(3):
        edge = [torch.nextafter(edge[0], torch.tensor(-math.inf, dtype=dtype))] + edge
        edge = edge + [torch.nextafter(edge[-1], torch.tensor(math.inf, dtype=dtype))]
    edge = torch.stack(edge)
    assert torch.equal(pixels_in_mask(edge, threshold), edge.double() >= exact)


@pytest.mark.parametrize("mode", ["mask_tokens", "rma"])
def test_encoder_matches_dense_reference(clip_model, mode):
    encoder = MaskCLIPVisualEncoder(clip_model.visual, mode=mode, refine_chunk_size=4)
    randomise_rma_weights(encoder)
    images = images_for(clip_model)
    masks = random_masks(2, encoder.input_size, encoder.patch_size)
    with torch.no_grad():
        out = encoder(images, masks)
    expected = dense_reference_forward(encoder, images, masks)
    assert torch.isfinite(out["features"]).all()
    assert torch.allclose(out["features"], expected["features"], atol=1e-4, rtol=1e-4)
    assert len(out["masks"]) == len(expected["masks"]) == len(encoder.rma_layers)
    for got, want in zip(out["masks"], expected["masks"]):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["mask_tokens", "rma"])
def test_empty_masks_and_no_masks(small_clip, mode):
    encoder = MaskCLIPVisualEncoder(small_clip.visual, mode=mode)
    randomise_rma_weights(encoder)
    images = images_for(small_clip)
    empty = torch.full((2, 3, 64, 64), -10.0)
    with torch.no_grad():
        out = encoder(images, empty)
        none = encoder(images, empty[:, :0])
    assert torch.isfinite(out["features"]).all()
    assert all(torch.isfinite(m).all() for m in out["masks"])
    # An empty mask token sees only the class token: all empty masks read the same thing.
    assert torch.allclose(out["features"][:, 0], out["features"][:, 2], atol=1e-6)
    assert none["features"].shape == (2, 0, out["features"].shape[-1])
    assert [m.shape for m in none["masks"]] == [(2, 0, 64, 64)] * len(encoder.rma_layers)


# ---- Relative Mask Attention and mask refinement ---------------------------------------------


def test_rma_matches_per_mask_formulas(clip_model):
    layers = len(clip_model.visual.transformer.resblocks)
    encoder = MaskCLIPVisualEncoder(clip_model.visual, mode="rma", rma_layers=[1, layers])
    randomise_rma_weights(encoder, seed=3)
    images = images_for(clip_model, batch=1)
    masks = random_masks(1, encoder.input_size, encoder.patch_size)[:, :5]
    with torch.no_grad():
        out = encoder(images, masks)
        for m in range(masks.shape[1]):
            feature, refined = per_mask_reference(encoder, images[0], masks[0, m])
            assert torch.allclose(out["features"][0, m], feature, atol=1e-4, rtol=1e-4)
            assert len(refined) == len(out["masks"]) == 2
            for got, want in zip(out["masks"], refined):
                assert torch.allclose(got[0, m], want, atol=1e-4, rtol=1e-4)
    # The refinement does change the masks, and the change reaches the visibility of later
    # layers (the reference recomputes Eq. 2 from the refined masks).
    assert (out["masks"][0] - masks).abs().max() > 1e-2


def test_mask_tokens_match_per_mask_formulas(small_clip):
    encoder = MaskCLIPVisualEncoder(small_clip.visual, mode="mask_tokens")
    images = images_for(small_clip, batch=1)
    masks = random_masks(1, 64, 8)[:, 1:5]
    with torch.no_grad():
        out = encoder(images, masks)
        for m in range(masks.shape[1]):
            feature, refined = per_mask_reference(encoder, images[0], masks[0, m])
            assert refined == []
            assert torch.allclose(out["features"][0, m], feature, atol=1e-4, rtol=1e-4)


def test_rma_with_zeroed_weights_halves_patch_logits(small_clip, monkeypatch):
    """A' = 0: patch logits are CLIP's / 2 (Eq. 4), the class logit is CLIP's, masks unchanged."""
    encoder = MaskCLIPVisualEncoder(small_clip.visual, mode="rma", rma_layers=[2])
    with torch.no_grad():
        for p in encoder.rma_layers.parameters():
            p.zero_()
    images = images_for(small_clip)
    masks = random_masks(2, 64, 8)
    B, M, N, H = 2, masks.shape[1], 64, encoder.num_heads
    d = encoder.width // H

    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        calls.append((q, k, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    with torch.no_grad():
        out = encoder(images, masks)
    monkeypatch.undo()

    assert len(calls) == 2 * 3  # per layer: image tokens, then mask tokens
    (_, clip_keys, image_mask), (q_mask, keys, bias) = calls[2], calls[3]  # layer 2
    assert image_mask is None  # image and class tokens: CLIP's attention, unmasked
    assert bias.shape == (B, H, M, 1 + N) and bias.is_floating_point()
    logits = q_mask @ keys.transpose(-1, -2) / math.sqrt(d) + bias
    clip_logits = q_mask @ clip_keys.transpose(-1, -2) / math.sqrt(d)
    visible = mask_visibility(masks, 8).unsqueeze(1).expand(B, H, M, N)
    assert torch.allclose(logits[..., 0], clip_logits[..., 0], atol=1e-6)  # class: unchanged
    patch_logits, clip_patch_logits = logits[..., 1:], clip_logits[..., 1:]
    assert torch.allclose(patch_logits[visible], clip_patch_logits[visible] / 2, atol=1e-6)
    assert torch.isneginf(patch_logits[~visible]).all()
    # Layers without RMA pass a boolean mask of shape (B, 1, M, 1 + N): broadcast over heads.
    assert calls[1][2].dtype == torch.bool and calls[1][2].shape == (B, 1, M, 1 + N)
    # Refinement adds exactly nothing.
    assert len(out["masks"]) == 1 and torch.equal(out["masks"][0], masks)


def test_rma_layers_default_to_every_quarter():
    assert default_rma_layers(24) == [6, 12, 18, 24]
    assert default_rma_layers(12) == [3, 6, 9, 12]
    assert default_rma_layers(4) == [1, 2, 3, 4]
    assert default_rma_layers(2) == [1, 2]
    model = tiny_clip(64, 16, 64, 4)
    encoder = MaskCLIPVisualEncoder(model.visual)
    assert list(encoder.rma_layers) == ["1", "2", "3", "4"]
    rma = encoder.rma_layers["1"]
    assert rma.mask_patch_embed.weight.shape == (64, 1, 16, 16)
    assert rma.refine_head[1].out_features == 16 * 16
    assert list(MaskCLIPVisualEncoder(model.visual, mode="mask_tokens").rma_layers) == []


def test_refine_chunk_size_does_not_change_results(small_clip):
    encoder = MaskCLIPVisualEncoder(small_clip.visual, refine_chunk_size=1)
    randomise_rma_weights(encoder)
    images = images_for(small_clip)
    masks = random_masks(2, 64, 8)
    with torch.no_grad():
        one = encoder(images, masks)
        encoder.refine_chunk_size = 1000
        all_at_once = encoder(images, masks)
    assert torch.allclose(one["features"], all_at_once["features"], atol=1e-5)
    for a, b in zip(one["masks"], all_at_once["masks"]):
        assert torch.allclose(a, b, atol=1e-5)


# ---- Training: CLIP frozen, gradients only into the added weights -----------------------------


def test_training_uses_its_own_chunk_size_with_the_same_gradients(small_clip):
    """MODEL.MASKCLIP.TRAIN_REFINE_CHUNK_SIZE: with gradients in training the RMA product runs
    in chunks of that many (image, mask) pairs, in inference REFINE_CHUNK_SIZE; the gradients
    do not depend on it."""
    model = copy.deepcopy(small_clip)
    images, masks = images_for(model), random_masks(2, 64, 8)  # B = 2 images, M = 8 masks
    grads, chunks = {}, {}
    for train_chunk in (2, 16):
        encoder = MaskCLIPVisualEncoder(model.visual, refine_chunk_size=2, train_refine_chunk_size=train_chunk)
        torch.manual_seed(0)
        randomise_rma_weights(encoder, std=0.1)
        layer = encoder.rma_layers[next(iter(encoder.rma_layers.keys()))]
        calls = []
        chunk = layer._chunk
        layer._chunk = lambda *args: calls.append(args[0].shape[1]) or chunk(*args)
        encoder.train()
        out = encoder(images, masks)
        (out["features"].square().mean() + sum(m.sigmoid().mean() for m in out["masks"])).backward()
        grads[train_chunk] = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        chunks[train_chunk] = list(calls)  # forward and the recomputation in backward
        calls.clear()
        encoder.eval()
        with torch.no_grad():
            encoder(images, masks)
        assert calls == [1] * 8  # inference: 2 pairs = 1 mask of 2 images per chunk
    assert chunks[2] == [1] * 16  # 8 chunks of 1 mask, each recomputed in backward
    assert chunks[16] == [8, 8]  # one chunk of all 8 masks (16 pairs), recomputed once
    assert grads[2].keys() == grads[16].keys() and grads[2]
    for name in grads[2]:
        torch.testing.assert_close(grads[2][name], grads[16][name], rtol=1e-4, atol=1e-6)


def test_gradients_reach_only_added_weights(small_clip):
    model = copy.deepcopy(small_clip)
    encoder = MaskCLIPVisualEncoder(model.visual, refine_chunk_size=5).train()
    randomise_rma_weights(encoder, std=0.1)
    assert not encoder.visual.training and all(m.training for m in encoder.rma_layers.modules())
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in encoder.named_parameters() if n.startswith("rma_layers.")}

    images = images_for(model)
    masks = random_masks(2, 64, 8)

    def loss_and_grads():
        encoder.zero_grad(set_to_none=True)
        out = encoder(images, masks)
        loss = out["features"].square().mean() + sum(m.sigmoid().mean() for m in out["masks"])
        loss.backward()
        return {n: p.grad for n, p in encoder.named_parameters()}

    grads = loss_and_grads()  # train mode: RMA chunks are recomputed in backward
    for name, grad in grads.items():
        if name.startswith("rma_layers."):
            assert grad is not None and grad.abs().sum() > 0, name
        else:
            assert grad is None, name
    encoder.eval()  # same gradients without recomputation
    for name, grad in loss_and_grads().items():
        if grad is not None:
            assert torch.allclose(grad, grads[name], atol=1e-6, rtol=1e-4), name


# ---- Precision, configuration and bad input ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_clip(small_clip, dtype):
    """CLIP in half precision as clip.load gives it (LayerNorms float32), RMA weights float32."""
    encoder = MaskCLIPVisualEncoder(small_clip.visual)
    randomise_rma_weights(encoder, std=0.1)
    images = images_for(small_clip)
    masks = random_masks(2, 64, 8)
    with torch.no_grad():
        expected = encoder(images, masks)
    half = copy.deepcopy(small_clip)
    clip.model.convert_weights(half)
    for p in half.parameters():
        p.data = p.data.to(dtype) if p.dtype == torch.float16 else p.data
    half_encoder = MaskCLIPVisualEncoder(half.visual)
    half_encoder.rma_layers.load_state_dict(encoder.rma_layers.state_dict())
    with torch.no_grad():
        out = half_encoder(images.to(dtype), masks.to(dtype))
    assert out["features"].dtype == dtype and out["masks"][0].dtype == dtype
    scale = expected["features"].abs().max()
    assert (out["features"].float() - expected["features"]).abs().max() < 0.05 * scale
    assert (out["masks"][-1].float() - expected["masks"][-1]).abs().max() < 0.05 * masks.abs().max()


def test_from_config(small_clip):
    from detectron2.config import get_cfg

    from maskclip_d2.config import add_maskclip_config

    cfg = add_maskclip_config(get_cfg())
    encoder = MaskCLIPVisualEncoder(cfg, small_clip.visual)
    assert encoder.mode == "rma" and list(encoder.rma_layers) == ["1", "2", "3"]
    assert encoder.refine_chunk_size == cfg.MODEL.MASKCLIP.REFINE_CHUNK_SIZE
    assert encoder.train_refine_chunk_size == cfg.MODEL.MASKCLIP.TRAIN_REFINE_CHUNK_SIZE
    cfg.MODEL.MASKCLIP.RMA_LAYERS = [3]
    cfg.MODEL.MASKCLIP.MASK_THRESHOLD = 0.7
    encoder = MaskCLIPVisualEncoder(cfg, small_clip.visual)
    assert list(encoder.rma_layers) == ["3"] and encoder.mask_threshold == 0.7
    cfg.MODEL.MASKCLIP.MODE = "mask_tokens"
    assert len(MaskCLIPVisualEncoder(cfg, small_clip.visual).rma_layers) == 0
    cfg.MODEL.MASKCLIP.MODE = "baseline"
    with pytest.raises(ValueError, match="CLIPBaselineEncoder"):
        MaskCLIPVisualEncoder(cfg, small_clip.visual)


def test_bad_input_is_refused_with_a_reason(small_clip):
    visual = small_clip.visual
    with pytest.raises(ValueError, match="1..3"):
        MaskCLIPVisualEncoder(visual, rma_layers=[0, 3])
    with pytest.raises(ValueError, match="distinct"):
        MaskCLIPVisualEncoder(visual, rma_layers=[2, 2])
    with pytest.raises(ValueError, match="mask_tokens"):
        MaskCLIPVisualEncoder(visual, mode="mask_tokens", rma_layers=[1])
    with pytest.raises(ValueError, match="mode"):
        MaskCLIPVisualEncoder(visual, mode="dense")
    resnet = CLIP(32, 64, (1, 1, 1, 1), 64, None, 8, 64, 64, 1, 1)
    with pytest.raises(ValueError, match="ViT"):
        MaskCLIPVisualEncoder(resnet.visual)

    encoder = MaskCLIPVisualEncoder(visual)
    images = images_for(small_clip)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        encoder(images[:, :, :32], torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="resize proposals"):
        encoder(images, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="B=2"):
        encoder(images, torch.zeros(1, 1, 64, 64))
