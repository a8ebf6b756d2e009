"""A straightforward dense-mask reference of the MaskCLIP Visual Encoder (Eq. 1-5).

Written the way the authors' code computes it, for the tests, ``benchmarks/benchmark_encoder.py``
and ``benchmarks/gpu_check.py``: one sequence ``[class; patches; mask tokens]``, the full
(M + 1 + N)^2 boolean attention mask of Eq. 1 repeated per head, full attention of every token
over every token (keys and values of mask tokens included, then masked out), explicit softmax,
and the M x N x D tensors of Eq. 3 and Eq. 5 for all masks at once. It reads the weights of a
``MaskCLIPVisualEncoder`` (CLIP's and the RMA ones) and must return what the encoder returns.
Images may be H x W (OpenCLIP towers with a non-square grid); OpenCLIP's layer scales
(``ls_1``, ``ls_2``) are applied where a block has them.
"""
import math

import torch
import torch.nn.functional as F


def dense_attention_mask(mask_logits, patch_size, threshold, num_heads):
    """Eq. 1-2 as written: (B * heads, L, L) bool, True = may NOT attend, L = 1 + N + M.

    Token order [class; N patches; M mask tokens]. Pixel-level test per (mask, patch) pair.
    """
    B, M, H, W = mask_logits.shape
    rows, cols = H // patch_size, W // patch_size
    N = rows * cols
    inside = torch.sigmoid(mask_logits.double()) >= threshold  # (B, M, H, W)
    patches = inside.reshape(B, M, rows, patch_size, cols, patch_size).permute(0, 1, 2, 4, 3, 5)
    mask_prime = ~patches.reshape(B, M, N, patch_size * patch_size).any(-1)  # Eq. 2

    L = 1 + N + M
    blocked = torch.zeros(B, L, L, dtype=torch.bool, device=mask_logits.device)
    blocked[:, :, 1 + N:] = True  # nobody attends to mask tokens (T blocks of Eq. 1)
    blocked[:, 1 + N:, 1:1 + N] = mask_prime  # M' block; the class column stays False
    return blocked.repeat_interleave(num_heads, dim=0)


def relative_mask_attention_dense(rma, mask_logits, image_tokens, q_scaled, k_patches):
    """Eq. 3 and Eq. 5 for all masks at once. Returns A' (B, H, M, N) and refined logits."""
    B, M, height, width = mask_logits.shape
    p = rma.patch_size
    rows, cols = height // p, width // p
    H = rma.num_heads
    # f2 as a convolution over the tanh of the masks, like the image patch embedding.
    T_MP = rma.mask_patch_embed(torch.tanh(mask_logits).reshape(B * M, 1, height, width))
    T_MP = T_MP.flatten(2).transpose(1, 2).reshape(B, M, rows * cols, -1)  # (B, M, N, D)
    D = T_MP.shape[-1]
    q_m = rma.mask_query_norm(T_MP)
    k_m = rma.mask_key_proj(image_tokens)  # (B, N, D)
    prod = q_m * k_m[:, None]  # (B, M, N, D)
    a_prime = prod.reshape(B, M, rows * cols, H, D // H).sum(-1).permute(0, 3, 1, 2)

    mask_res = q_scaled[:, :, None, :] * k_patches[:, None, :, :]  # (B, M, N, D)
    mask_res = rma.refine_head(mask_res)  # (B, M, N, p*p)
    mask_res = mask_res.reshape(B * M, rows, cols, p * p).permute(0, 3, 1, 2)  # (B*M, p*p, rows, cols)
    mask_res = F.pixel_shuffle(mask_res, p).reshape(B, M, height, width)
    return a_prime, mask_logits + mask_res


@torch.no_grad()
def dense_reference_forward(encoder, images, mask_logits):
    """Same contract as ``MaskCLIPVisualEncoder.forward``, computed densely."""
    visual = encoder.visual
    B, M = mask_logits.shape[:2]
    p, D, H = encoder.patch_size, encoder.width, encoder.num_heads
    d = D // H

    x = visual.conv1(images)
    x = x.reshape(B, D, -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(B, 1, D, dtype=x.dtype, device=x.device)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    N = x.shape[1] - 1
    x = torch.cat([x, x[:, :1].repeat(1, M, 1)], dim=1)  # (B, L, D)
    L = x.shape[1]

    masks = []
    for i, block in enumerate(visual.transformer.resblocks, start=1):
        blocked = dense_attention_mask(mask_logits, p, encoder.mask_threshold, H)
        h = block.ln_1(x)
        q, k, v = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)
        q, k, v = (t.reshape(B, L, H, d).permute(0, 2, 1, 3) for t in (q, k, v))
        q = q / math.sqrt(d)
        logits = q @ k.transpose(-1, -2)  # (B, H, L, L)
        if str(i) in encoder.rma_layers:
            rma = encoder.rma_layers[str(i)]
            q_flat = q.permute(0, 2, 1, 3).reshape(B, L, D)
            k_flat = k.permute(0, 2, 1, 3).reshape(B, L, D)
            a_prime, mask_logits = relative_mask_attention_dense(
                rma, mask_logits, h[:, 1:1 + N], q_flat[:, 1 + N:], k_flat[:, 1:1 + N]
            )
            block_logits = logits[:, :, 1 + N:, 1:1 + N]
            logits[:, :, 1 + N:, 1:1 + N] = (block_logits + a_prime / math.sqrt(d)) / 2
            masks.append(mask_logits)
        logits = logits.reshape(B * H, L, L).masked_fill(blocked, float("-inf"))
        attn = logits.softmax(-1).reshape(B, H, L, L)
        out = (attn @ v).permute(0, 2, 1, 3).reshape(B, L, D)
        ls_1, ls_2 = getattr(block, "ls_1", None), getattr(block, "ls_2", None)  # OpenCLIP
        attn_out = block.attn.out_proj(out)
        x = x + (ls_1(attn_out) if ls_1 is not None else attn_out)
        mlp_out = block.mlp(block.ln_2(x))
        x = x + (ls_2(mlp_out) if ls_2 is not None else mlp_out)

    features = visual.ln_post(x[:, 1 + N:]) @ visual.proj
    return {"features": features, "masks": masks}
