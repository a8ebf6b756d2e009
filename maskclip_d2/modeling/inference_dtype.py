"""Inference in bfloat16 (MODEL.MASKCLIP.INFERENCE_DTYPE): the networks under autocast, the
numerics that decide outputs in float32.

What runs in bfloat16 (``torch.autocast`` on the model's device, CPU or CUDA): the matrix
products and convolutions of the proposal network (R50 + pixel decoder + transformer decoder)
and of the MaskCLIP Visual Encoder (CLIP's image tower, RMA). The residual streams stay
float32 (a bfloat16 product added to a float32 stream is float32), and so their layer norms;
on CUDA autocast also runs every softmax and norm in float32, on CPU those of bfloat16 inputs
in bfloat16 (the pixel decoder keeps its levels and attention-weight softmax float32 itself).
What stays float32: the text embeddings (computed outside), the cosine classification, the mask logits handed on (cast back after each network),
and all post-processing (softmax over classes, sigmoid, thresholds, ``postprocessing.py``).

"float32" (the default) changes nothing: no autocast, the paper's protocol.
"""
import contextlib
from typing import Dict

import torch

__all__ = [
    "INFERENCE_DTYPES", "check_inference_dtype", "inference_autocast", "proposal_memory_format",
    "add_dtype_argument", "dtype_opts",
]

# MODEL.MASKCLIP.INFERENCE_DTYPE -> the autocast dtype (None: no autocast).
INFERENCE_DTYPES: Dict[str, object] = {"float32": None, "bfloat16": torch.bfloat16}


def check_inference_dtype(name: str) -> str:
    if name not in INFERENCE_DTYPES:
        raise ValueError(
            f"MODEL.MASKCLIP.INFERENCE_DTYPE (--dtype) must be one of {tuple(INFERENCE_DTYPES)}, "
            f"got {name!r}"
        )
    return name


def inference_autocast(device: torch.device, name: str):
    """A context running ``name``'s precision on ``device``'s type ("cpu" or "cuda"): autocast
    for "bfloat16", nothing for "float32"."""
    dtype = INFERENCE_DTYPES[check_inference_dtype(name)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)



def proposal_memory_format(name: str) -> torch.memory_format:
    """The memory format of the proposal network's convolution weights in ``name``'s
    precision: channels-last in bfloat16 (oneDNN's bf16 convolutions run channels-last; the
    R50 proposals ran 1.8x faster than in float32 on a CPU with AMX), contiguous in float32
    (channels-last float32 was slower there, and float32 stays as built)."""
    return torch.channels_last if INFERENCE_DTYPES[check_inference_dtype(name)] else torch.contiguous_format


def add_dtype_argument(parser):
    """``--dtype`` of the command-line tools (demo, train_net.py --eval-only): sets
    MODEL.MASKCLIP.INFERENCE_DTYPE."""
    parser.add_argument(
        "--dtype", choices=tuple(INFERENCE_DTYPES), default=None,
        help="inference precision (MODEL.MASKCLIP.INFERENCE_DTYPE; default: the config's, float32): "
        "bfloat16 runs the proposal network and the encoder under autocast, faster on CPUs with "
        "AVX512-BF16 / AMX and on GPUs",
    )
    return parser


def dtype_opts(args):
    """``--dtype`` as config overrides (KEY VALUE), [] when not given."""
    dtype = getattr(args, "dtype", None)
    return ["MODEL.MASKCLIP.INFERENCE_DTYPE", dtype] if dtype else []
