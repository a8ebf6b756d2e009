"""tools/convert_official_checkpoint.py: the authors' checkpoints into ours.

The authors' state dicts here are built from their code's names and shapes
(mlpc-ucsd/MaskCLIP: ``maskclip/model.py`` holds ``backbone``, ``sem_seg_head``, ``criterion``
and ``maskclip.visual``; ``maskclip/modeling/maskclip.py`` the ``conv1/conv3_added_params``;
``maskclip/modeling/attention.py`` the ``q_prime_norm / k_prime_proj_weight_added_params``),
with random tensors. The reference forward below is written from their code's formulas
(token order [masks; class; patches], dense boolean attention mask, QuickGELU refinement,
their pixel unfolding) on their keys, independently of our encoder.
"""
import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from maskclip_d2 import add_maskclip_config
from maskclip_d2.modeling.clip.openai_loader import CLIP_ARCHITECTURES, CLIPArchitecture
from maskclip_d2.modeling.encoder.maskclip_encoder import MaskCLIPVisualEncoder
from maskclip_d2.modeling.clip.text_encoder import CLIPTextEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "convert_official_checkpoint", os.path.join(ROOT, "tools", "convert_official_checkpoint.py")
)
convert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert)

# Same naming as ViT-L/14@336px, smaller widths: 2 heads (width 128), 4 layers, RMA in the
# authors' blocks 1 and 3 (0-based) = our layers 2 and 4.
SMALL = CLIPArchitecture(
    embed_dim=64, image_resolution=64, vision_layers=4, vision_width=128, vision_patch_size=16,
    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
    transformer_layers=1,
)
SMALL_RMA_BLOCKS = (1, 3)


def authors_visual_state(visual_state, rma_blocks, patch, generator=None, device=None):
    """``maskclip.visual.*`` as in the authors' checkpoint: CLIP's image tower plus their
    added RMA weights (random)."""
    width = visual_state["conv1.weight"].shape[0]

    def rand(*shape):
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=generator) / math.sqrt(shape[-1])

    state = {"maskclip.visual." + k: v for k, v in visual_state.items()}
    for j, i in enumerate(rma_blocks):
        attn = f"maskclip.visual.transformer.resblocks.{i}.attn."
        state[attn + "q_prime_norm_added_params.weight"] = 1 + rand(width)
        state[attn + "q_prime_norm_added_params.bias"] = rand(width)
        state[attn + "k_prime_proj_weight_added_params.weight"] = rand(width, width)
        state[attn + "k_prime_proj_weight_added_params.bias"] = rand(width)
        convs = "maskclip.visual.transformer."
        state[convs + f"conv1_added_params.{j}.weight"] = rand(width, 1, patch, patch) * 4
        state[convs + f"conv1_added_params.{j}.bias"] = rand(width)
        state[convs + f"conv3_added_params.{j}.weight"] = rand(patch * patch, width, 1, 1) * 8
        state[convs + f"conv3_added_params.{j}.bias"] = rand(patch * patch)
    return state


def _layer_norm32(x, weight, bias):
    """The authors' (and CLIP's) LayerNorm: computed in float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float()).to(x.dtype)


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)  # the authors' ``gelu`` in maskclip.py


@torch.no_grad()
def authors_reference_forward(state, images, masks, heads, patch, rma_blocks):
    """The authors' VisionTransformer.forward, written from their code, on their keys.
    Returns (features (B, q, E), final refined mask logits (B, q, R, R))."""
    w = lambda k: state["maskclip.visual." + k]  # noqa: E731
    x = F.conv2d(images, w("conv1.weight"), stride=patch)
    B, W = x.shape[:2]
    x = x.reshape(B, W, -1).permute(0, 2, 1)
    N = x.shape[1]
    g = int(round(math.sqrt(N)))
    R = images.shape[-1]
    x = torch.cat([w("class_embedding") + torch.zeros(B, 1, W), x], dim=1) + w("positional_embedding")
    x = _layer_norm32(x, w("ln_pre.weight"), w("ln_pre.bias")).permute(1, 0, 2)  # LND
    q = masks.shape[1]
    x = torch.cat([x[0:1].repeat(q, 1, 1), x], dim=0)  # [mask tokens; class; patches]
    L, hd = x.shape[0], W // heads
    layers = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("maskclip.visual.transformer.resblocks."))
    for i in range(layers):
        b = lambda k: w(f"transformer.resblocks.{i}." + k)  # noqa: E731
        seen = F.max_pool2d((masks.sigmoid() >= 0.5).float(), patch).flatten(2)
        blocked = torch.zeros(B, L, L, dtype=torch.bool)
        blocked[:, :, :q] = True
        blocked[:, :q, q + 1:] = seen == 0.0
        blocked = blocked.repeat_interleave(heads, dim=0)

        h = _layer_norm32(x, b("ln_1.weight"), b("ln_1.bias"))
        qq, kk, vv = F.linear(h, b("attn.in_proj_weight"), b("attn.in_proj_bias")).chunk(3, dim=-1)
        qq, kk, vv = (t.reshape(L, B * heads, hd).transpose(0, 1) for t in (qq, kk, vv))
        qq = qq / math.sqrt(hd)
        attn = qq @ kk.transpose(-2, -1)
        if i in rma_blocks:
            j = rma_blocks.index(i)
            conv = lambda n, k: w(f"transformer.conv{n}_added_params.{j}.{k}")  # noqa: E731
            embed = F.conv2d(masks.tanh().unsqueeze(2).flatten(0, 1), conv(1, "weight"), conv(1, "bias"), stride=patch)
            embed = embed.reshape(B, q, W, N).permute(1, 3, 0, 2)  # (q, N, B, W)
            q_masks = F.layer_norm(
                embed, (W,), b("attn.q_prime_norm_added_params.weight"), b("attn.q_prime_norm_added_params.bias")
            )
            k_masks = F.linear(
                h[q + 1:], b("attn.k_prime_proj_weight_added_params.weight"),
                b("attn.k_prime_proj_weight_added_params.bias"),
            )
            q_masks = q_masks.reshape(q, N, B * heads, hd).permute(2, 0, 1, 3)
            k_masks = k_masks.reshape(N, B * heads, hd).permute(1, 0, 2)
            q_flat = qq.reshape(B, heads, L, hd).permute(0, 2, 1, 3).reshape(B, L, W)
            k_flat = kk.reshape(B, heads, L, hd).permute(0, 2, 1, 3).reshape(B, L, W)
            mask_res = q_flat[:, :q, None, :] * k_flat[:, None, q + 1:, :]  # (B, q, N, W)
            attn2 = (q_masks / math.sqrt(hd) * k_masks[:, None]).sum(-1)
            attn[:, :q, q + 1:] = (attn[:, :q, q + 1:] + attn2) / 2
        attn = attn.masked_fill(blocked, float("-inf")).softmax(-1)
        out = (attn @ vv).transpose(0, 1).reshape(L, B, W)
        x = x + F.linear(out, b("attn.out_proj.weight"), b("attn.out_proj.bias"))
        h2 = _layer_norm32(x, b("ln_2.weight"), b("ln_2.bias"))
        x = x + F.linear(_quick_gelu(F.linear(h2, b("mlp.c_fc.weight"), b("mlp.c_fc.bias"))),
                         b("mlp.c_proj.weight"), b("mlp.c_proj.bias"))
        if i in rma_blocks:
            res = mask_res.permute(0, 1, 3, 2).reshape(B * q, W, g, g)
            res = F.conv2d(_quick_gelu(res), conv(3, "weight"), conv(3, "bias"))
            res = res.reshape(-1, patch, patch, g, g).permute(0, 3, 1, 4, 2)
            res = res.flatten(1, 2).flatten(2, 3).reshape(B, q, R, R)
            masks = masks + res
    x = x.permute(1, 0, 2)
    features = _layer_norm32(x[:, :q], w("ln_post.weight"), w("ln_post.bias")) @ w("proj")
    return features, masks


def _small_model(monkeypatch):
    monkeypatch.setitem(CLIP_ARCHITECTURES, "small-test", SMALL)
    cfg = get_cfg()
    add_maskclip_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/tiny/maskclip_tiny.yaml"))
    cfg.merge_from_list([
        "MODEL.CLIP.NAME", "small-test",
        "MODEL.MASKCLIP.RMA_LAYERS", str([i + 1 for i in SMALL_RMA_BLOCKS]),
    ])
    return build_model(cfg).eval()


def test_authors_checkpoint_converts_loads_strictly_and_matches_their_forward(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = _small_model(monkeypatch)
    generator = torch.Generator().manual_seed(1)
    clip_model = SMALL.build()  # "OpenAI's" CLIP: its image tower sits in their checkpoint
    proposal = {
        k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in model.proposal_network.network.state_dict().items()
    }
    authors = authors_visual_state(clip_model.visual.state_dict(), SMALL_RMA_BLOCKS, 16, generator)
    # model_final.pth: their decoder has no class_embed; their criterion has 133 + 1 weights.
    authors.update({k: v for k, v in proposal.items() if ".class_embed." not in k})
    authors["criterion.empty_weight"] = torch.ones(134)
    # The class-agnostic proposal network: the same Mask2Former with a 1 + 1 class head.
    proposal_file = {**proposal, "criterion.empty_weight": torch.ones(2)}
    torch.save({"model": authors, "iteration": 9999}, tmp_path / "model_final.pth")
    torch.save({"model": proposal_file}, tmp_path / "mask_proposal_network.pth")
    torch.save(clip_model.state_dict(), tmp_path / "clip.pt")

    # Default: the layout of our training checkpoints, without CLIP's frozen weights (their
    # image tower, checked against --clip-weights first; MODEL.CLIP.WEIGHTS provides them).
    inputs = ["--maskclip", str(tmp_path / "model_final.pth"), "--proposals",
              str(tmp_path / "mask_proposal_network.pth"), "--clip-weights", str(tmp_path / "clip.pt")]
    assert convert.main([*inputs, "--output", str(tmp_path / "slim.pth")], target_state=model.state_dict()) == 0
    slim = torch.load(tmp_path / "slim.pth", weights_only=True)["model"]
    assert set(slim) == {k for k in model.state_dict() if not k.startswith(convert.CLIP_PREFIXES)
                         and not k.endswith("criterion.empty_weight")}  # (a loss buffer, from the config)
    # ... refused when their image tower is not that CLIP's.
    torch.save(SMALL.build().state_dict(), tmp_path / "other_clip.pt")
    other = [*inputs[:-1], str(tmp_path / "other_clip.pt"), "--output", str(tmp_path / "other.pth")]
    assert convert.main(other, target_state=model.state_dict()) == 1
    assert not (tmp_path / "other.pth").exists()

    # --with-clip: self-contained, their image tower and CLIP's text tower included.
    out = tmp_path / "converted.pth"
    assert convert.main([*inputs, "--with-clip", "--output", str(out)], target_state=model.state_dict()) == 0
    converted = torch.load(out, weights_only=True)["model"]
    assert all(torch.equal(converted[k], v) for k, v in slim.items())
    model.load_state_dict(converted, strict=True)  # every key, every shape

    # Values went where the mapping says.
    assert torch.equal(model.encoder.rma_layers["4"].refine_head[1].weight,
                       authors["maskclip.visual.transformer.conv3_added_params.1.weight"].flatten(1))
    assert torch.equal(model.encoder.rma_layers["2"].mask_key_proj.weight,
                       authors["maskclip.visual.transformer.resblocks.1.attn.k_prime_proj_weight_added_params.weight"])
    assert torch.equal(model.text_encoder.token_embedding.weight, clip_model.token_embedding.weight)
    assert torch.equal(model.proposal_network.network.sem_seg_head.predictor.class_embed.weight,
                       proposal["sem_seg_head.predictor.class_embed.weight"])

    # Same features and refined masks as the authors' forward on their weights.
    images = torch.randn(2, 3, 64, 64, generator=generator)
    masks = torch.randn(2, 5, 64, 64, generator=generator) * 4
    masks[:, 0] = 10.0  # one mask over the whole image
    with torch.no_grad():
        ours = model.encoder(images, masks)
    features, refined = authors_reference_forward(authors, images, masks.clone(), 2, 16, SMALL_RMA_BLOCKS)
    assert torch.allclose(ours["features"], features, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ours["masks"][-1], refined, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(refined, masks, atol=1e-2)  # the RMA weights did something


def test_vit_l14_336_layout_maps_onto_our_encoder_and_text_tower():
    """Keys and shapes only (meta tensors): their ViT-L/14@336px checkpoint, RMA in blocks 5,
    11, 17, 23, against our encoder (layers 6, 12, 18, 24) and text tower."""
    with torch.device("meta"):
        clip_model = CLIP_ARCHITECTURES["ViT-L/14@336px"].build()
        encoder = MaskCLIPVisualEncoder(clip_model.visual)
        text = CLIPTextEncoder(clip_model)
    assert sorted(encoder.rma_layers) == ["12", "18", "24", "6"]
    authors = authors_visual_state(clip_model.visual.state_dict(), (5, 11, 17, 23), 14, device="meta")
    converted, rest, left_out = convert.convert_maskclip(authors)
    assert rest == [] and left_out == []
    converted.update(convert.text_tower_state(clip_model.state_dict()))
    target = {"encoder." + k: v for k, v in encoder.state_dict().items()}
    target.update({"text_encoder." + k: v for k, v in text.state_dict().items()})
    assert convert.check(converted, target) == {"missing": [], "unexpected": [], "mismatched": []}
    assert converted["encoder.rma_layers.24.refine_head.1.weight"].shape == (14 * 14, 1024)
    assert converted["encoder.rma_layers.6.mask_patch_embed.weight"].shape == (1024, 1, 14, 14)


class _NotATensor:
    pass


def test_refuses_pickles_unknown_and_missing_keys_and_writes_nothing(tmp_path, capsys):
    target = {"encoder.visual.proj": torch.zeros(4, 2), "encoder.visual.ln_post.weight": torch.zeros(4)}
    out = tmp_path / "out.pth"

    # Needs full unpickling: refused without --allow-pickle.
    torch.save({"model": {"maskclip.visual.proj": torch.zeros(4, 2)}, "cfg": _NotATensor()}, tmp_path / "pickled.pth")
    assert convert.main(["--maskclip", str(tmp_path / "pickled.pth"), "--output", str(out)], target) == 2
    assert "--allow-pickle" in capsys.readouterr().err

    # An unknown key and a missing key are listed, and stop the conversion.
    torch.save({"maskclip.visual.proj": torch.zeros(4, 2), "maskclip.extra.weight": torch.zeros(3)}, tmp_path / "a.pth")
    # (--with-clip: these CLIP keys belong in the output.)
    assert convert.main(["--maskclip", str(tmp_path / "a.pth"), "--with-clip", "--output", str(out)], target) == 1
    printed = capsys.readouterr()
    assert "maskclip.extra.weight" in printed.out and "encoder.visual.ln_post.weight" in printed.out
    assert "nothing written" in printed.err

    # A shape mismatch stops it even with both --allow flags.
    torch.save({"maskclip.visual.proj": torch.zeros(4, 3)}, tmp_path / "b.pth")
    argv = ["--maskclip", str(tmp_path / "b.pth"), "--with-clip", "--output", str(out), "--allow-missing",
            "--allow-unknown"]
    assert convert.main(argv, target) == 1
    assert "encoder.visual.proj" in capsys.readouterr().out
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["a.pth", "b.pth", "pickled.pth"]


def test_authors_12_layer_checkpoint_drops_the_conv_pairs_their_code_never_used():
    """Their code builds four conv1/conv3_added_params pairs whatever the depth; a 12-layer
    CLIP (ViT-B/16) has RMA attention weights in blocks 5 and 11 only (our RMA_LAYERS [6, 12])."""
    with torch.device("meta"):
        clip_model = CLIP_ARCHITECTURES["ViT-B/16"].build()
        encoder = MaskCLIPVisualEncoder(clip_model.visual, rma_layers=[6, 12])
    authors = authors_visual_state(clip_model.visual.state_dict(), (5, 11), 16, device="meta")
    convs = "maskclip.visual.transformer."
    for j in (2, 3):  # built for blocks 17 and 23, which a 12-layer CLIP does not have
        authors[convs + f"conv1_added_params.{j}.weight"] = torch.empty(768, 1, 16, 16, device="meta")
        authors[convs + f"conv1_added_params.{j}.bias"] = torch.empty(768, device="meta")
        authors[convs + f"conv3_added_params.{j}.weight"] = torch.empty(256, 768, 1, 1, device="meta")
        authors[convs + f"conv3_added_params.{j}.bias"] = torch.empty(256, device="meta")
    converted, rest, left_out = convert.convert_maskclip(authors)
    assert rest == []
    assert sorted(left_out) == sorted(convs + f"conv{c}_added_params.{j}.{k}"
                                      for c in (1, 3) for j in (2, 3) for k in ("weight", "bias"))
    target = {"encoder." + k: v for k, v in encoder.state_dict().items()}
    assert convert.check(converted, target) == {"missing": [], "unexpected": [], "mismatched": []}


def test_drop_class_head_takes_a_133_class_mask2former_as_proposal_network(tmp_path, capsys):
    target = {
        "backbone.stem.conv1.weight": torch.zeros(2, 3, 1, 1),
        "sem_seg_head.predictor.class_embed.weight": torch.zeros(2, 4),
        "sem_seg_head.predictor.class_embed.bias": torch.zeros(2),
        "criterion.empty_weight": torch.ones(2),
    }
    mask2former = {
        "backbone.stem.conv1.weight": torch.ones(2, 3, 1, 1),
        "sem_seg_head.predictor.class_embed.weight": torch.ones(134, 4),
        "sem_seg_head.predictor.class_embed.bias": torch.ones(134),
        "criterion.empty_weight": torch.ones(134),
    }
    torch.save({"model": mask2former}, tmp_path / "coco_mask2former.pth")
    out = tmp_path / "proposals.pth"
    argv = ["--proposals", str(tmp_path / "coco_mask2former.pth"), "--output", str(out)]
    assert convert.main(argv, target) == 1  # the 134-output head does not fit
    assert "SHAPE MISMATCHES" in capsys.readouterr().out and not out.exists()
    assert convert.main(argv + ["--drop-class-head"], target) == 0
    assert sorted(torch.load(out, weights_only=True)["model"]) == ["backbone.stem.conv1.weight"]


def test_checkpoint_over_an_openclip_tower_converts_and_loads_strictly(tmp_path):
    """A MaskCLIP over an OpenCLIP tower (layer scales, 4 heads of 32) saved in the authors'
    layout converts against a config naming that tower; --clip-weights is its weights file."""
    from safetensors.torch import save_file

    from helpers.openclip_models import tiny_openclip, write_local_dir

    name = write_local_dir(str(tmp_path / "tiny"), width=128, layers=4, ls_init_value=0.5)
    opts = ["MODEL.CLIP.NAME", name, "MODEL.MASKCLIP.RMA_LAYERS", "[2, 4]"]
    clip_model = tiny_openclip(width=128, layers=4, ls_init_value=0.5, seed=5)
    save_file({k: v.contiguous() for k, v in clip_model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    generator = torch.Generator().manual_seed(1)
    authors = authors_visual_state(clip_model.visual.state_dict(), SMALL_RMA_BLOCKS, 16, generator)
    assert any(".ls_1.gamma" in k for k in authors)
    torch.save({"model": authors}, tmp_path / "model_final.pth")

    out = tmp_path / "converted.pth"
    argv = ["--maskclip", str(tmp_path / "model_final.pth"), "--clip-weights", str(tmp_path / "clip.safetensors"),
            "--config-file", os.path.join(ROOT, "configs/tiny/maskclip_tiny.yaml"), "--output", str(out),
            "--with-clip", "--allow-missing", "--opts", *opts]  # missing: the proposal network
    assert convert.main(argv) == 0
    converted = torch.load(out, weights_only=True)["model"]
    cfg = get_cfg()
    add_maskclip_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/tiny/maskclip_tiny.yaml"))
    cfg.merge_from_list(opts)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == [] and all(k.startswith("proposal_network.") for k in missing)
    assert torch.equal(model.encoder.visual.transformer.resblocks[3].ls_2.gamma,
                       clip_model.visual.transformer.resblocks[3].ls_2.gamma)
    assert torch.equal(model.text_encoder.token_embedding.weight, clip_model.token_embedding.weight)
    assert torch.equal(model.encoder.rma_layers["4"].refine_head[1].weight,
                       authors["maskclip.visual.transformer.conv3_added_params.1.weight"].flatten(1))
