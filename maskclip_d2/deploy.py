"""Deployment: MaskCLIP exported to ONNX and run with ONNX Runtime.

``export_onnx(model, path)`` writes two graphs:

* ``path`` (e.g. ``model.onnx``), the image graph: ``MaskCLIP.predict`` for one image, traced
  by ``torch.export`` with the image size and the vocabulary size symbolic.
    inputs:  ``image`` (3, H, W) uint8 in ``INPUT.FORMAT``, what MaskCLIP receives as a
             dataset dict's "image" (resized by ``ResizeShortestEdge``, not padded); H and W
             any size from ``MIN_IMAGE_SIDE`` up;
             ``class_embeddings`` (C, E) float32 text embeddings of the vocabulary, any C.
    outputs: ``class_logits`` (1, M, C + 1), the vocabulary then no-object (whose text
             embedding is part of the graph); ``mask_logits`` (1, M, R, R), the masks MaskCLIP
             outputs (the last RMA layer's, else the proposals) at CLIP's resolution R;
             ``objectness`` (1, M).
  The config the model was built from is stored in the file's metadata.
* ``<path without .onnx>.text.onnx``, the text graph: ``tokens`` (T, context_length) int64
  (``clip.tokenize``) -> ``text_embeddings`` (T, E), unit norm: CLIP's text tower, so that a
  deployed model stays open-vocabulary.

``ONNXRuntimeMaskCLIP(path)`` is a ``MaskCLIP`` whose ``predict`` runs the image graph with
ONNX Runtime and whose text encoder runs the text graph; everything else (vocabulary handling,
template / synonym ensembles, probabilities, mask resizing, semantic / panoptic / instance
post-processing) is MaskCLIP's own code. ``ONNXPredictor(path)`` is the ``Predictor`` over it.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import clip
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import nn

from .config import get_maskclip_cfg
from .modeling.encoder.maskclip_encoder import MaskCLIPVisualEncoder
from .modeling.maskclip import MaskCLIP
from .modeling.proposals.sources import Mask2FormerProposals
from .modeling.clip.text_encoder import CLIPTextEncoder, check_vocabulary, ensemble_embeddings
from .predictor import Predictor
from .utils import atomic_write, atomic_write_with_companion

__all__ = [
    "export_onnx", "external_data_path", "check_exportable", "check_config_exportable", "text_graph_path", "ONNXRuntimeMaskCLIP", "ONNXTextEncoder", "ONNXPredictor",
    "MIN_IMAGE_SIDE",
]


# The exported image graph holds for images whose sides are both at least this: the padded
# image must span at least two of the backbone's 32-pixel strides (smaller sizes would take
# other branches of the shape arithmetic than the traced ones).
MIN_IMAGE_SIDE = 64

# Keys of the image graph's metadata.
CONFIG_KEY = "maskclip_d2.config"
MIN_SIDE_KEY = "maskclip_d2.min_image_side"
TEXT_GRAPH_KEY = "maskclip_d2.text_graph"
SIZE_DIVISIBILITY_KEY = "maskclip_d2.size_divisibility"

# Protobuf limits one ONNX file to 2 GB: a graph with more weights than this (e.g. with a
# ViT-H/14 image tower; the paper's ViT-L/14@336px + R50 image graph is 1.4 GB, one file) keeps
# them in ``external_data_path(path)`` beside it, ONNX's external data (torch.onnx's threshold).
EXTERNAL_DATA_BYTES = 3 * 2**29

IMAGE_INPUTS = ("image", "class_embeddings")
IMAGE_OUTPUTS = ("class_logits", "mask_logits", "objectness")


def text_graph_path(path: str) -> str:
    """Where the text graph of the image graph ``path`` lives: ``x.onnx`` -> ``x.text.onnx``."""
    return os.path.splitext(path)[0] + ".text.onnx"


class _ImageGraph(nn.Module):
    """``MaskCLIP.predict`` on one image, with the outputs the exported graph returns."""

    def __init__(self, model: MaskCLIP):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, class_embeddings: torch.Tensor):
        predictions = self.model.predict([{"image": image}], class_embeddings)
        refined = predictions["refined_masks"]
        masks = refined[-1] if refined else predictions["mask_logits"]
        return predictions["class_logits"], masks, predictions["objectness"]


class _TextGraph(nn.Module):
    """``CLIPTextEncoder.encode_text`` after tokenisation: token ids -> unit-norm embeddings."""

    def __init__(self, text_encoder: CLIPTextEncoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, tokens: torch.Tensor):
        return F.normalize(self.text_encoder.encode_tokens(tokens).float(), dim=-1)


def check_exportable(model: nn.Module) -> None:
    """ValueError unless ``model`` is a MaskCLIP that ``export_onnx`` can export."""
    if not isinstance(model, MaskCLIP):
        raise ValueError(f"only MaskCLIP models export, got {type(model).__name__}")
    if not isinstance(model.encoder, MaskCLIPVisualEncoder):
        raise ValueError(
            f"MODEL.MASKCLIP.MODE {type(model.encoder).__name__} does not export: use 'rma' or "
            "'mask_tokens'"
        )
    if model.inference_dtype != "float32":
        raise ValueError(
            f"MODEL.MASKCLIP.INFERENCE_DTYPE is {model.inference_dtype!r}: the ONNX export is "
            "float32; export with MODEL.MASKCLIP.INFERENCE_DTYPE float32"
        )
    if not isinstance(model.proposal_network, Mask2FormerProposals):
        raise ValueError(
            f"proposals from {type(model.proposal_network).__name__} do not export: "
            "MODEL.MASKCLIP.PROPOSAL_NETWORK must be 'mask2former'"
        )


def check_config_exportable(cfg) -> None:
    """``check_exportable`` read from the config: ValueError before the model is built."""
    mc = cfg.MODEL.MASKCLIP
    if cfg.MODEL.META_ARCHITECTURE != "MaskCLIP":
        raise ValueError(f"only MaskCLIP models export, got MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE}")
    if mc.MODE not in ("rma", "mask_tokens"):
        raise ValueError(f"MODEL.MASKCLIP.MODE {mc.MODE!r} does not export: use 'rma' or 'mask_tokens'")
    if mc.INFERENCE_DTYPE != "float32":
        raise ValueError(
            f"MODEL.MASKCLIP.INFERENCE_DTYPE is {mc.INFERENCE_DTYPE!r}: the ONNX export is "
            "float32; export with MODEL.MASKCLIP.INFERENCE_DTYPE float32"
        )
    if mc.PROPOSAL_NETWORK != "mask2former":
        raise ValueError(
            f"proposals from {mc.PROPOSAL_NETWORK!r} do not export: "
            "MODEL.MASKCLIP.PROPOSAL_NETWORK must be 'mask2former'"
        )


def _to_onnx(module: nn.Module, args: Tuple, dynamic_shapes, input_names, output_names,
             optimize: bool):
    """torch.export (non-strict, symbolic sizes) then ONNX; an ``onnxscript`` ONNXProgram."""
    with torch.no_grad():
        exported = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        return torch.onnx.export(
            exported, args, dynamo=True, input_names=list(input_names),
            output_names=list(output_names), optimize=optimize, verbose=False,
        )


def external_data_path(path: str) -> str:
    """Where a graph too large for one file keeps its weights: ``x.onnx`` -> ``x.onnx.data``."""
    return path + ".data"


def _save(program, path: str, metadata: Dict[str, str]) -> None:
    for key, value in metadata.items():
        program.model.metadata_props[key] = value
    weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                  if v.const_value is not None)
    if weights <= EXTERNAL_DATA_BYTES:
        with atomic_write(path) as tmp:
            # One self-contained file (initializers inside).
            program.save(tmp, external_data=False)
        return
    # Weights in ``external_data_path(path)``, which the graph names by its file name: keep
    # the two files together in one folder.
    with atomic_write_with_companion(path, ".data") as staged:
        program.save(staged, external_data=True)


def export_onnx(model: MaskCLIP, cfg: CfgNode, path: str, optimize: bool = False) -> Dict[str, str]:
    """Exports ``model`` (built from ``cfg``, weights loaded) to ``path`` and its text graph to
    ``text_graph_path(path)`` (see the module docstring). Each file is written whole or not at
    all. ``optimize``: run onnxscript's graph optimizer too (ONNX Runtime optimizes the graph
    itself when it loads it; this doubles the export time). Returns ``{"image_graph": path,
    "text_graph": ...}``."""
    check_exportable(model)
    if not path.endswith(".onnx"):
        raise ValueError(f"the output must be an .onnx file, got {path}")
    model.eval()
    text_encoder = model.text_encoder
    # The no-object embedding enters the image graph as a constant: computed here, cached.
    text_encoder.encode_vocabulary([text_encoder.no_object_name])
    vocabulary = text_encoder.encode_vocabulary(model.vocabulary)
    if len(vocabulary) == 1:  # an example of size 1 would be taken for a constant
        vocabulary = vocabulary.repeat(2, 1)

    # An example of the shapes the graph takes: a resized image whose sides differ and are no
    # multiple of the backbone stride, so that no shape is mistaken for a constant.
    side = max(cfg.INPUT.MIN_SIZE_TEST, MIN_IMAGE_SIDE)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, side + 3, side * 4 // 3 + 5), dtype=torch.uint8, generator=generator)
    height = torch.export.Dim("height", min=MIN_IMAGE_SIDE)
    width = torch.export.Dim("width", min=MIN_IMAGE_SIDE)
    classes = torch.export.Dim("classes", min=1)
    image_program = _to_onnx(
        _ImageGraph(model), (image, vocabulary.to(model.device)),
        ({1: height, 2: width}, {0: classes}), IMAGE_INPUTS, IMAGE_OUTPUTS, optimize,
    )

    tokens = clip.tokenize(["a", "photo of a cat"], context_length=text_encoder.context_length)
    tokens = tokens.long().to(text_encoder.text_projection.device)
    text_program = _to_onnx(
        _TextGraph(text_encoder), (tokens,), ({0: torch.export.Dim("texts", min=1)},),
        ("tokens",), ("text_embeddings",), optimize,
    )

    text_path = text_graph_path(path)
    _save(text_program, text_path, {})
    _save(image_program, path, {
        CONFIG_KEY: cfg.dump(), MIN_SIDE_KEY: str(MIN_IMAGE_SIDE),
        TEXT_GRAPH_KEY: os.path.basename(text_path),
        SIZE_DIVISIBILITY_KEY: str(model.size_divisibility),
    })
    return {"image_graph": path, "text_graph": text_path}


def _session(path: str, providers: Optional[Sequence[str]], num_threads: Optional[int]):
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such ONNX file; create it with tools/export_onnx.py --output {path}"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # Memory as the graph needs it, not ONNX Runtime's arena and shape-planned pattern: at the
    # paper's size (ViT-L/14@336px + R50, 640 x 853) a forward peaked at 15.1 GB of RSS with
    # them, 7.8 GB without, and ran as fast (9.6 s against 10.3 s, 2 threads).
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # No busy-waiting of the graph's threads after a run: the post-processing (PyTorch, the same
    # process) runs right after it on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=list(providers or ["CPUExecutionProvider"]))


class ONNXTextEncoder(nn.Module):
    """``CLIPTextEncoder``'s vocabulary side over the exported text graph: the same
    tokenisation, template and synonym ensembles (``ensemble_embeddings``), cache and checks."""

    def __init__(self, session, prompt_templates: Sequence[str], no_object_name: str,
                 context_length: int, batch_size: int = 256, split_synonyms: bool = False):
        super().__init__()
        self.split_synonyms = split_synonyms
        self.session = session
        self.prompt_templates = tuple(prompt_templates)
        self.no_object_name = no_object_name
        self.context_length = context_length
        self.batch_size = batch_size
        self.embedding_width = session.get_outputs()[0].shape[-1]
        self._cache: Dict[Tuple[str, ...], torch.Tensor] = {}

    check_no_object = CLIPTextEncoder.check_no_object

    def encode_vocabulary(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, E) float32 unit-norm text embeddings of the class names (cached)."""
        names = check_vocabulary(class_names)
        if names not in self._cache:
            self._cache[names] = ensemble_embeddings(
                names, self.prompt_templates, self.encode_text, self.batch_size, self.split_synonyms
            )
        return self._cache[names]

    def encode_text(self, texts: List[str]) -> torch.Tensor:
        """(T, E) unit-norm embeddings of texts, as ``CLIPTextEncoder.encode_text``."""
        tokens = clip.tokenize(texts, context_length=self.context_length, truncate=True)
        (embeddings,) = self.session.run(None, {"tokens": tokens.long().numpy()})
        return torch.from_numpy(embeddings)


class ONNXRuntimeMaskCLIP(MaskCLIP):
    """MaskCLIP over an exported image graph and text graph, run with ONNX Runtime (CPU by
    default; ``providers`` as ONNX Runtime names them, e.g. ``["CUDAExecutionProvider"]``).
    Inference only. ``cfg`` is the config stored in the file, with ``opts`` merged in (e.g.
    post-processing thresholds; the network keys must stay those the graph was exported with).
    """

    def __init__(
        self,
        path: str,
        opts: Sequence[str] = (),
        providers: Optional[Sequence[str]] = None,
        num_threads: Optional[int] = None,
    ):
        session = _session(path, providers, num_threads)
        metadata = session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise ValueError(
                f"{path} has no MaskCLIP config in its metadata: it was not written by "
                "tools/export_onnx.py"
            )
        cfg = get_maskclip_cfg()
        cfg.merge_from_other_cfg(CfgNode.load_cfg(metadata[CONFIG_KEY]))
        cfg.merge_from_list(list(opts))
        cfg.freeze()
        text_path = os.path.join(os.path.dirname(path), metadata[TEXT_GRAPH_KEY])
        text_session = _session(text_path, providers, num_threads)
        mc = cfg.MODEL.MASKCLIP
        text_encoder = ONNXTextEncoder(
            text_session, mc.PROMPT_TEMPLATES, mc.NO_OBJECT_NAME,
            text_session.get_inputs()[0].shape[-1], split_synonyms=mc.SPLIT_SYNONYMS,
        )
        options = MaskCLIP.inference_options(cfg)
        options["size_divisibility"] = int(metadata[SIZE_DIVISIBILITY_KEY])
        super().__init__(
            proposal_network=nn.Identity(), encoder=nn.Identity(), text_encoder=text_encoder,
            criterion=None, **options,
        )
        self.cfg = cfg
        self.session = session
        self.path = path
        self.min_image_side = int(metadata[MIN_SIDE_KEY])
        self.embedding_width = session.get_inputs()[1].shape[-1]
        if text_encoder.embedding_width != self.embedding_width:
            raise ValueError(
                f"{text_path} gives {text_encoder.embedding_width}-wide text embeddings, "
                f"{path} takes {self.embedding_width}-wide ones: the two files come from "
                "different exports; export again"
            )

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("a MaskCLIP run with ONNX Runtime is inference-only")
        return super().train(False)

    def predict(self, batched_inputs: List[Dict], class_embeddings: torch.Tensor) -> Dict:
        """``MaskCLIP.predict`` by the image graph, one image at a time (the refined masks are
        already the graph's ``mask_logits``)."""
        if class_embeddings.dim() != 2 or class_embeddings.shape[1] != self.embedding_width:
            raise ValueError(
                f"class_embeddings must be (C, {self.embedding_width}) for {self.path}, got "
                f"{tuple(class_embeddings.shape)}"
            )
        embeddings = class_embeddings.detach().float().cpu().numpy()
        outputs = []
        for x in batched_inputs:
            image = x["image"]
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"the exported model takes (3, H, W) uint8 images, got {tuple(image.shape)} "
                    f"{image.dtype}"
                )
            if min(image.shape[1:]) < self.min_image_side:
                raise ValueError(
                    f"image of {image.shape[1]} x {image.shape[2]} pixels: {self.path} takes "
                    f"images with both sides >= {self.min_image_side}; resize it first"
                )
            feed = {"image": np.ascontiguousarray(image.cpu().numpy()), "class_embeddings": embeddings}
            outputs.append(self.session.run(list(IMAGE_OUTPUTS), feed))
        class_logits, mask_logits, objectness = (
            torch.from_numpy(np.concatenate(arrays)) for arrays in zip(*outputs)
        )
        return {
            "class_logits": class_logits, "mask_logits": mask_logits, "objectness": objectness,
            "refined_masks": [], "padded_size": self.padded_size(batched_inputs),
        }


def ONNXPredictor(path: str, opts: Sequence[str] = (), providers: Optional[Sequence[str]] = None,
                  num_threads: Optional[int] = None) -> Predictor:
    """A ``Predictor`` (same calls, same outputs) running the exported model at ``path``."""
    model = ONNXRuntimeMaskCLIP(path, opts, providers, num_threads)
    return Predictor(model.cfg, model=model)
