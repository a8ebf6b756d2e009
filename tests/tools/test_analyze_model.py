"""tools/analyze_model.py: the shape of the paper's Table 6 (CLIP Baseline vs MaskCLIP FLOPs).

Tracing the real setting (ViT-L/14, 100 masks) runs 100 ViT-L forwards for the baseline: minutes
on a CPU, so it is run by hand (``python tools/analyze_model.py``). Here CLIP keeps ViT-B/16's
geometry, which sets the ratio (224 px, 16 px patches: N = 196 patches for M = 100 masks, 12
layers, RMA in 4 of them) at a third of its width (384, 6 heads), and the proposal network is
the tiny one; the image is 640 x 640 with 100 masks. The ratio is about
M / (1 + 0.8 M / N + RMA's share), above 20 for ViT-B/16 and ViT-L/14 alike.
"""
import importlib.util
import os

import torch

from maskclip_d2.modeling.clip.openai_loader import CLIP_ARCHITECTURES, CLIPArchitecture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("analyze_model", os.path.join(ROOT, "tools", "analyze_model.py"))
analyze_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(analyze_model)

NARROW_B16 = CLIPArchitecture(
    embed_dim=256, image_resolution=224, vision_layers=12, vision_width=384, vision_patch_size=16,
    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
    transformer_layers=1,
)


def test_sdpa_is_counted():
    q = torch.randn(2, 3, 5, 8)
    k = v = torch.randn(2, 3, 7, 8)

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    counted = analyze_model.count_flops(Attention(), (q, k, v))
    assert counted["flops"] == 2 * 2 * 3 * 5 * 7 * 8  # Q K^T and A V
    assert "aten::scaled_dot_product_attention" not in counted["skipped"]


def test_fused_multihead_attention_is_counted_like_the_unfused_one():
    """Batch-first nn.MultiheadAttention (OpenCLIP's blocks) takes a fused kernel in inference,
    which fvcore does not know: counted like the op-by-op path of sequence-first ones."""
    torch.manual_seed(0)
    fused = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    unfused = torch.nn.MultiheadAttention(64, 4, batch_first=False).eval()
    x = torch.randn(2, 9, 64)

    class SelfAttention(torch.nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    counted = analyze_model.count_flops(SelfAttention(fused), (x,))
    assert "aten::_native_multi_head_attention" not in counted["skipped"]
    assert counted["flops"] == analyze_model.count_flops(SelfAttention(unfused), (x.transpose(0, 1),))["flops"]
    assert counted["flops"] == 2 * (2 * 9 * 64 * 64 * 2 + 2 * 9 * 9 * 64)


def test_clip_baseline_costs_over_20x_maskclip_at_640_with_100_masks(monkeypatch, capsys):
    monkeypatch.setitem(CLIP_ARCHITECTURES, "narrow-B/16", NARROW_B16)
    cfg = analyze_model.setup_cfg(
        os.path.join(ROOT, "configs/tiny/maskclip_tiny.yaml"),
        ["MODEL.CLIP.NAME", "narrow-B/16", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "100",
         "MODEL.MASKCLIP.NUM_PROPOSALS", "100"],
    )
    results = analyze_model.analyze(
        cfg, image_size=640, num_masks=100, num_classes=4, methods=("baseline", "rma"),
        stages=("proposals", "clip"),
    )
    base, ours = results["baseline"], results["rma"]
    assert base["total"]["flops"] > 20 * ours["total"]["flops"]
    assert base["proposals"]["flops"] == ours["proposals"]["flops"] > 0
    # The baseline is M CLIP forwards: its CLIP stage is 100 x one image's, attention included.
    visual = NARROW_B16.build().visual.eval()
    visual_one = analyze_model.count_flops(visual, (torch.randn(1, 3, 224, 224),))
    assert base["clip"]["flops"] == 100 * visual_one["flops"]
    assert not any("scaled_dot_product" in op for op in base["total"]["skipped"] | ours["total"]["skipped"])
    # Parameters: only RMA trains; the baseline trains nothing.
    assert base["total"]["params"]["trainable"] == 0
    rma = ours["clip"]["params"]["trainable"]
    assert rma > 0 and ours["total"]["params"]["frozen"] == base["total"]["params"]["total"]
    table = analyze_model.format_table(results, 640, 100, 4, "narrow-B/16")
    assert "CLIP Baseline / MaskCLIP:" in table



def test_openclip_tower_is_analysed_with_its_own_tokenizer(tmp_path):
    """FLOPs and parameters of every stage with an OpenCLIP tower (layer scales, its own
    context length): the baseline's CLIP stage is M times the tower's own forward."""
    from helpers.openclip_models import write_local_dir

    name = write_local_dir(str(tmp_path / "tiny"), ls_init_value=0.5, context_length=24)
    cfg = analyze_model.setup_cfg(os.path.join(ROOT, "configs/tiny/maskclip_tiny.yaml"), ["MODEL.CLIP.NAME", name])
    results = analyze_model.analyze(cfg, image_size=64, num_masks=10, num_classes=3,
                                    methods=("baseline", "mask_tokens", "rma"))
    visual = analyze_model.build_model(cfg).encoder.visual.eval()
    visual_one = analyze_model.count_flops(visual, (torch.randn(1, 3, 64, 64),))
    assert results["baseline"]["clip"]["flops"] == 10 * visual_one["flops"]
    assert 0 < results["mask_tokens"]["clip"]["flops"] < results["rma"]["clip"]["flops"]
    assert results["rma"]["clip"]["params"]["trainable"] > 0
    assert results["rma"]["text"]["flops"] > 0
