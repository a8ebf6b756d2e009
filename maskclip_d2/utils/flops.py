"""FLOP counting with fvcore, attention included (fvcore has no rule for SDPA, nor for the fused
``nn.MultiheadAttention`` path that batch-first towers such as OpenCLIP's take in inference)."""
from collections import Counter
from typing import Dict, List

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

__all__ = ["sdpa_flop_jit", "native_mha_flop_jit", "count_flops"]


def sdpa_flop_jit(inputs: List, outputs: List) -> int:
    """fvcore handle of ``aten::scaled_dot_product_attention``: Q K^T costs B*H*Lq*Lk*D
    multiply-adds and A V B*H*Lq*Lk*Dv (2 * B * H * Lq * Lk * D when Dv = D); softmax and
    masking are not counted, as fvcore counts no element-wise op."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, lq, d = q
    lk, dv = k[-2], v[-1]
    heads = 1
    for size in batch:
        heads *= size
    return heads * lq * lk * (d + dv)


def native_mha_flop_jit(inputs: List, outputs: List) -> int:
    """fvcore handle of ``aten::_native_multi_head_attention`` (``nn.MultiheadAttention``'s
    fused inference path): the q, k, v and output projections (B*Lq*D*D, 2*B*Lk*D*D, B*Lq*D*D)
    plus Q K^T and A V (2*B*Lq*Lk*D), as the unfused path is counted op by op."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, lq, d = q
    lk = k[-2]
    b = 1
    for size in batch:
        b *= size
    return b * (2 * lq * d * d + 2 * lk * d * d + 2 * lq * lk * d)


def count_flops(module: nn.Module, inputs: tuple) -> Dict[str, object]:
    """{"flops": total multiply-adds of ``module(*inputs)``, "skipped": Counter of the
    operators fvcore did not count}."""
    analysis = FlopCountAnalysis(module, inputs).set_op_handle(
        **{"aten::scaled_dot_product_attention": sdpa_flop_jit,
           "aten::_native_multi_head_attention": native_mha_flop_jit}
    )
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        total = analysis.total()
    return {"flops": total, "skipped": Counter(analysis.unsupported_ops())}
