#!/usr/bin/env python
"""Converts the authors' released MaskCLIP weights (github.com/mlpc-ucsd/MaskCLIP) into a
checkpoint of this project.

    python tools/convert_official_checkpoint.py \
        --maskclip model_final.pth --proposals mask_proposal_network.pth \
        --clip-weights ViT-L/14@336px --output maskclip_vitl14_336_official.pth
    python demo/demo.py --config-file configs/coco/maskclip_vitl14_336.yaml \
        --opts MODEL.WEIGHTS maskclip_vitl14_336_official.pth MODEL.MASKCLIP.PROPOSAL_WEIGHTS ""

With ``--proposals`` alone it converts the class-agnostic proposal network only, into a file
for ``MODEL.MASKCLIP.PROPOSAL_WEIGHTS``.

Key mapping (names from the authors' ``maskclip/model.py``, ``maskclip/modeling/maskclip.py``
and ``maskclip/modeling/attention.py``; their ``MaskFormer`` meta-architecture holds
``backbone``, ``sem_seg_head``, ``criterion`` and ``maskclip.visual``):

    backbone.*                                    -> proposal_network.network.backbone.*
    sem_seg_head.*                                -> proposal_network.network.sem_seg_head.*
    maskclip.visual.transformer.conv1_added_params.{j}.*
                                                  -> encoder.rma_layers.{l_j}.mask_patch_embed.*
    maskclip.visual.transformer.conv3_added_params.{j}.weight (p*p, W, 1, 1)
                                                  -> encoder.rma_layers.{l_j}.refine_head.1.weight (p*p, W)
    maskclip.visual.transformer.conv3_added_params.{j}.bias
                                                  -> encoder.rma_layers.{l_j}.refine_head.1.bias
    maskclip.visual.transformer.resblocks.{i}.attn.q_prime_norm_added_params.*
                                                  -> encoder.rma_layers.{i+1}.mask_query_norm.*
    maskclip.visual.transformer.resblocks.{i}.attn.k_prime_proj_weight_added_params.*
                                                  -> encoder.rma_layers.{i+1}.mask_key_proj.*
    maskclip.visual.* (CLIP's image tower, frozen) -> encoder.visual.*
    criterion.empty_weight                        -> (not kept: a training buffer of their loss)

``l_j`` is the j-th RMA layer (1-based): the authors' blocks 5, 11, 17, 23 (0-based, the
blocks whose attention has ``*_added_params``) are our layers 6, 12, 18, 24, and their
``conv{1,3}_added_params[i // 6]`` index those blocks in order. Their code always builds
four ``conv*_added_params`` pairs; in a CLIP with fewer layers (e.g. 12: RMA in blocks 5 and
11 only, our ``MODEL.MASKCLIP.RMA_LAYERS [6, 12]``) the pairs of blocks that do not exist
were never used, and are left out (listed).

``--drop-class-head`` leaves the proposal network's class head
(``sem_seg_head.predictor.class_embed``) out, e.g. to use a standard 133-class Mask2Former as
the proposal network; the model keeps its own (unused by MaskCLIP in "rma" mode when
``NUM_PROPOSALS`` equals the number of queries), and it is not reported missing.

CLIP's frozen weights: the output has this project's checkpoint layout, without CLIP (which
comes from ``MODEL.CLIP.WEIGHTS`` when the model is built, 1.7 GB less at ViT-L/14@336px):
their image tower is left out of it. Given ``--clip-weights`` (an official name or a CLIP
file, as for ``MODEL.CLIP.WEIGHTS``), their image tower is first compared with that CLIP's,
and a difference stops the conversion. ``--with-clip`` writes a self-contained file instead
(Detectron2's full state dict): their image tower, plus CLIP's text tower from
``--clip-weights`` (their checkpoint has none: they compute the text embeddings from
``clip.load`` at start-up; without ``--clip-weights`` it is listed as missing).

What their checkpoint does not hold:
When the config names an OpenCLIP model (``MODEL.CLIP.NAME "openclip:<arch>"``, e.g. a MaskCLIP
trained on an OpenCLIP tower and saved in the authors' layout), ``--clip-weights`` is that
model's weights: a pretrained tag or a file.
* The class head of the proposal network in ``model_final.pth`` (their decoder comments out
  ``class_embed``). It comes from ``--proposals`` if that file has one; otherwise it is
  missing. MaskCLIP ("rma" mode) does not use objectness when ``NUM_PROPOSALS`` equals the
  number of queries (all queries are kept).

Safety and checks: checkpoints are read with ``torch.load(weights_only=True)``, which
cannot run code from the file. A file that needs full unpickling (e.g. a ``.pkl`` of NumPy
arrays, or a pickled training state) is refused unless ``--allow-pickle`` is given, for files
you trust. Every key is accounted for: keys not in the mapping ("unknown") and keys of our
model that nothing provides ("missing") are listed and stop the conversion unless
``--allow-unknown`` / ``--allow-missing`` says to go on (then unknown keys are left out of the
output and missing ones keep our model's values when loaded); a shape mismatch always stops it.
The output is written whole or not at all (a temporary file, then a rename).
"""
import argparse
import os
import pickle
import re
import sys
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskclip_d2.utils import atomic_write  # noqa: E402

__all__ = [
    "load_checkpoint", "convert_maskclip", "convert_proposals", "text_tower_state",
    "merge", "check", "save_whole", "main",
]

PROPOSAL_PREFIX = "proposal_network.network."
ENCODER_PREFIX = "encoder."
TEXT_PREFIX = "text_encoder."
# Keys of the authors' checkpoints that are known and deliberately not converted.
KNOWN_UNUSED = {"criterion.empty_weight": "a training buffer of their loss (no-object weight)"}
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Our state-dict prefixes of CLIP's frozen weights (MaskCLIP.CLIP_PREFIXES).
CLIP_PREFIXES = (ENCODER_PREFIX + "visual.", TEXT_PREFIX)

_AUTHORS_VISUAL = "maskclip.visual."
_ATTN_ADDED = re.compile(
    r"^maskclip\.visual\.transformer\.resblocks\.(\d+)\.attn\."
    r"(q_prime_norm_added_params|k_prime_proj_weight_added_params)\.(weight|bias)$"
)
_CONV_ADDED = re.compile(r"^maskclip\.visual\.transformer\.(conv1|conv3)_added_params\.(\d+)\.(weight|bias)$")
_OURS_OF_ATTN = {
    "q_prime_norm_added_params": "mask_query_norm",  # phi_Qm
    "k_prime_proj_weight_added_params": "mask_key_proj",  # phi_Km
}


def load_checkpoint(path: str, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """A checkpoint's state dict (Detectron2's ``{"model": ...}`` unwrapped).

    Read with ``torch.load(weights_only=True)``; files that need full unpickling raise unless
    ``allow_pickle``. NumPy arrays (Detectron2's .pkl format) become tensors.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.endswith(".pkl"):
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle file, which can run code when read: pass --allow-pickle "
                f"only if you trust its source"
            )
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if not allow_pickle:
                raise ValueError(
                    f"{path} holds objects other than tensors and plain containers, so reading "
                    f"it needs full unpickling, which can run code from the file ({err}). Pass "
                    f"--allow-pickle only if you trust its source."
                ) from err
            data = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a state dict (or a dict with a 'model' state dict), got {type(data).__name__}")
    state = {}
    for key, value in data.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key] = value
    return state


CLASS_HEAD = "sem_seg_head.predictor.class_embed."


def convert_proposals(
    state: Mapping[str, torch.Tensor], prefix: str = PROPOSAL_PREFIX, drop_class_head: bool = False
) -> Tuple[Dict, List[str]]:
    """The Mask2Former part (``backbone.*``, ``sem_seg_head.*``): same names as ours, under
    ``prefix``; without its class head when ``drop_class_head``. Returns (converted, keys not
    converted)."""
    converted, rest = {}, []
    for key, value in state.items():
        if drop_class_head and key.startswith(CLASS_HEAD):
            continue
        if key.startswith(("backbone.", "sem_seg_head.")):
            converted[prefix + key] = value
        else:
            rest.append(key)
    return converted, rest


def convert_maskclip(state: Mapping[str, torch.Tensor], drop_class_head: bool = False) -> Tuple[Dict, List[str], List[str]]:
    """The authors' ``model_final.pth``: proposal network + MaskCLIP encoder (see the module
    docstring for the mapping). Returns (converted, keys not converted, keys left out because
    their code built them for blocks this CLIP does not have)."""
    converted, rest = convert_proposals(state, drop_class_head=drop_class_head)
    rma_blocks = sorted({int(m.group(1)) for k in state if (m := _ATTN_ADDED.match(k))})
    conv_indices = sorted({int(m.group(2)) for k in state if (m := _CONV_ADDED.match(k))})
    # Their code builds conv*_added_params for four blocks whatever the depth; pair j serves
    # the j-th RMA block, and pairs beyond the blocks that have RMA weights were never used.
    if conv_indices != list(range(len(conv_indices))) or len(conv_indices) < len(rma_blocks):
        raise ValueError(
            f"the checkpoint has RMA attention weights in blocks {rma_blocks} (0-based) but "
            f"conv1/conv3_added_params indices {conv_indices}: expected pairs 0, 1, ... for "
            f"every RMA block"
        )
    unused = conv_indices[len(rma_blocks):]
    layer_of_conv = {j: block + 1 for j, block in enumerate(rma_blocks)}  # our 1-based layers

    unconverted, left_out = [], []
    for key in rest:
        value = state[key]
        if m := _ATTN_ADDED.match(key):
            block, name, kind = int(m.group(1)), m.group(2), m.group(3)
            converted[f"{ENCODER_PREFIX}rma_layers.{block + 1}.{_OURS_OF_ATTN[name]}.{kind}"] = value
        elif (m := _CONV_ADDED.match(key)) and int(m.group(2)) in unused:
            left_out.append(key)
        elif m := _CONV_ADDED.match(key):
            conv, j, kind = m.group(1), int(m.group(2)), m.group(3)
            layer = layer_of_conv[j]
            if conv == "conv1":  # f2: Conv2d(1, W, p, stride p) over tanh(masks)
                converted[f"{ENCODER_PREFIX}rma_layers.{layer}.mask_patch_embed.{kind}"] = value
            else:  # f_r's 1x1 Conv2d(W, p*p) is our Linear(W, p*p)
                if kind == "weight":
                    if value.dim() != 4 or value.shape[2:] != (1, 1):
                        raise ValueError(f"{key}: expected a 1x1 convolution weight (p*p, W, 1, 1), got {tuple(value.shape)}")
                    value = value.flatten(1)
                converted[f"{ENCODER_PREFIX}rma_layers.{layer}.refine_head.1.{kind}"] = value
        elif key.startswith(_AUTHORS_VISUAL):
            converted[ENCODER_PREFIX + "visual." + key[len(_AUTHORS_VISUAL):]] = value
        else:
            unconverted.append(key)
    return converted, unconverted, left_out


def text_tower_state(clip_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CLIP's text tower from a CLIP state dict, under our ``text_encoder.`` names."""
    return {TEXT_PREFIX + k: v for k, v in clip_state.items() if k.startswith(TEXT_KEYS)}


def merge(primary: Dict, secondary: Dict) -> Tuple[Dict, List[str]]:
    """``primary`` plus the keys only ``secondary`` has; returns the keys both have with
    different values (``primary`` wins: the weights MaskCLIP was trained with)."""
    merged, differing = dict(primary), []
    for key, value in secondary.items():
        if key not in merged:
            merged[key] = value
        elif merged[key].shape != value.shape or not torch.equal(merged[key], value):
            differing.append(key)
    return merged, differing


def check(converted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> Dict[str, List]:
    """Compares converted keys and shapes with our model's state dict (``target``; tensors
    on any device, meta included). Returns {"missing", "unexpected", "mismatched"}."""
    return {
        "missing": sorted(k for k in target if k not in converted),
        "unexpected": sorted(k for k in converted if k not in target),
        "mismatched": sorted(
            (k, tuple(converted[k].shape), tuple(target[k].shape))
            for k in converted if k in target and converted[k].shape != target[k].shape
        ),
    }


def save_whole(obj, path: str) -> None:
    """``torch.save`` through a temporary file in the same folder, then a rename."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def _target_state(config_file: str, opts: List[str], proposals_only: bool) -> Dict[str, torch.Tensor]:
    """Our model's state dict for a config (random weights: only names and shapes matter)."""
    from detectron2.modeling import build_model

    from maskclip_d2.config import get_maskclip_cfg, shapes_only

    model = build_model(shapes_only(get_maskclip_cfg(config_file, opts)))
    if proposals_only:
        return model.proposal_network.network.state_dict()
    return model.state_dict()


def _clip_state(clip_weights: str, config_file: str, opts: List[str]) -> Dict[str, torch.Tensor]:
    """The state dict of the CLIP ``--clip-weights`` names: OpenAI's (``load_clip``), or, when
    the config names an OpenCLIP model, that model with these weights (a tag or a file)."""
    from maskclip_d2.config import get_maskclip_cfg
    from maskclip_d2.modeling.clip.openai_loader import build_clip_model, load_clip
    from maskclip_d2.modeling.clip.openclip_loader import OPENCLIP_PREFIX

    name = get_maskclip_cfg(config_file, opts).MODEL.CLIP.NAME
    if name.startswith(OPENCLIP_PREFIX):
        return build_clip_model(name, clip_weights).state_dict()
    return load_clip(clip_weights).state_dict()


def _print_list(title: str, items: List, note: str = "") -> None:
    if items:
        print(f"{title} ({len(items)}){note}:")
        for item in items:
            print(f"  {item}")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maskclip", metavar="FILE", help="the authors' model_final.pth")
    parser.add_argument("--proposals", metavar="FILE", help="the authors' class-agnostic mask proposal network")
    parser.add_argument(
        "--clip-weights", metavar="NAME_OR_FILE",
        help="CLIP to take the text tower from: an official name (e.g. ViT-L/14@336px, looked up "
        "in the CLIP cache) or a CLIP file",
    )
    parser.add_argument("--config-file", default="configs/coco/maskclip_vitl14_336.yaml", metavar="FILE",
                        help="our config whose model the output must fit")
    parser.add_argument("--output", required=True, metavar="FILE")
    parser.add_argument(
        "--with-clip", action="store_true",
        help="keep CLIP's frozen weights in the output (their image tower, the text tower from "
        "--clip-weights): a self-contained file; default: left out, as MODEL.CLIP.WEIGHTS provides them",
    )
    parser.add_argument("--allow-missing", action="store_true", help="write even if keys of our model are not provided")
    parser.add_argument("--allow-unknown", action="store_true", help="write even if the input has keys the mapping does not know")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow full unpickling of the inputs (can run code: trusted files only)")
    parser.add_argument("--drop-class-head", action="store_true",
                        help="leave the proposal network's class head out (e.g. a 133-class Mask2Former)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def main(argv=None, target_state: Optional[Mapping[str, torch.Tensor]] = None) -> int:
    """``target_state``: our model's state dict to check against (default: built from
    ``--config-file``)."""
    args = get_parser().parse_args(argv)
    if not args.maskclip and not args.proposals:
        print("error: give --maskclip and/or --proposals", file=sys.stderr)
        return 2
    proposals_only = not args.maskclip
    try:
        converted, unknown = {}, []
        if args.maskclip:
            converted, rest, left_out = convert_maskclip(
                load_checkpoint(args.maskclip, args.allow_pickle), args.drop_class_head)
            unknown += [f"{args.maskclip}: {k}" for k in rest if k not in KNOWN_UNUSED]
            _print_list("left out: built by the authors' code for RMA blocks this CLIP does not have", left_out)
        if args.proposals:
            prefix = "" if proposals_only else PROPOSAL_PREFIX
            proposals, rest = convert_proposals(
                load_checkpoint(args.proposals, args.allow_pickle), prefix, args.drop_class_head)
            unknown += [f"{args.proposals}: {k}" for k in rest if k not in KNOWN_UNUSED]
            converted, differing = merge(converted, proposals)
            _print_list("proposal-network keys that differ between the two files (kept from --maskclip)", differing)
        if args.clip_weights and not proposals_only:
            clip_state = _clip_state(args.clip_weights, args.config_file, args.opts)
            if args.with_clip:
                converted, _ = merge(converted, text_tower_state(clip_state))
            else:
                differing = sorted(
                    k for k, v in converted.items() if k.startswith(CLIP_PREFIXES[0])
                    and not torch.equal(v, clip_state.get(k[len("encoder."):], torch.empty(0)).to(v.dtype))
                )
                _print_list(f"CLIP image-tower keys of the input that differ from {args.clip_weights}", differing)
                if differing:
                    print(f"error: nothing written to {args.output}: their image tower is not "
                          f"{args.clip_weights}'s; pass --with-clip to keep theirs", file=sys.stderr)
                    return 1
        if not args.with_clip:
            converted = {k: v for k, v in converted.items() if not k.startswith(CLIP_PREFIXES)}
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if target_state is None:
        target_state = _target_state(args.config_file, args.opts, proposals_only)
    if not args.with_clip and not proposals_only:  # MODEL.CLIP.WEIGHTS provides them
        target_state = {k: v for k, v in target_state.items() if not k.startswith(CLIP_PREFIXES)}
    report = check(converted, target_state)
    _print_list("not converted, known", [f"{k}: {why}" for k, why in KNOWN_UNUSED.items()])
    _print_list("UNKNOWN keys of the input (no mapping)", unknown)
    _print_list("keys with no counterpart in our model", report["unexpected"])
    # the criterions' no-object weights come from the config (SetCriterion)
    missing = [k for k in report["missing"] if not k.endswith("criterion.empty_weight")]
    if args.drop_class_head:
        missing = [k for k in missing if CLASS_HEAD not in k]
    notes = []
    if any(k.startswith(TEXT_PREFIX) for k in missing):
        notes.append("text_encoder.*: the authors' checkpoint has no text tower; pass --clip-weights")
    if any(".class_embed." in k for k in missing):
        notes.append("class_embed: their model_final.pth has no proposal class head; pass --proposals "
                     "with a file that has one (not needed in 'rma' mode with NUM_PROPOSALS = queries)")
    _print_list("MISSING keys of our model", missing, "; " + "; ".join(notes) if notes else "")
    _print_list("SHAPE MISMATCHES (key, input, ours)", report["mismatched"])

    problems = []
    if report["mismatched"]:
        problems.append("shapes differ")
    if (unknown or report["unexpected"]) and not args.allow_unknown:
        problems.append("unknown keys (--allow-unknown to leave them out)")
    if missing and not args.allow_missing:
        problems.append("missing keys (--allow-missing to keep our model's values for them)")
    if problems:
        print(f"error: nothing written to {args.output}: " + "; ".join(problems), file=sys.stderr)
        return 1
    state = {
        k: v.to(target_state[k].dtype) if v.is_floating_point() else v
        for k, v in converted.items() if k in target_state
    }
    save_whole({"model": state, "__source__": "mlpc-ucsd/MaskCLIP (converted)"}, args.output)
    print(f"wrote {len(state)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
