"""int8 deployment: ONNX Runtime's dynamic quantization of an exported image graph.

``quantize_int8("model.onnx", "model.int8.onnx")`` stores the weights of the graph's matrix
products (MatMul / Gemm: CLIP's image tower, RMA, the proposal network's transformer) as int8
with one scale per output channel; activations are quantized on the fly, per tensor, at each
product (ONNX Runtime's ``quantize_dynamic``: no calibration images). Convolutions, softmax,
normalisation and everything after the logits stay float32. The result is a graph that
``maskclip_d2.deploy.ONNXPredictor`` runs like the float32 one: the MaskCLIP config and the
text graph (float32, shared with the original) are those of the original export.

How close it stays to float32 and how fast it runs: ``tools/export_onnx.py --int8`` prints
the same comparison as for the float32 export (``export_check``), with int8-sized tolerances.
"""
import os
import tempfile

from .utils import atomic_write

__all__ = ["quantize_int8", "fold_weight_transposes", "INT8_RELATIVE_TOLERANCES", "int8_path"]

# What the int8 graph is checked against (relative to each output's scale, as
# ``export_check``): int8 weights and activations are ~1% accurate each.
INT8_RELATIVE_TOLERANCES = {"class_logits": 0.1, "mask_logits": 0.1, "objectness": 0.1}


# Protobuf's limit on one serialised model (2 GB), and the weights above which the folded
# float32 graph is written with external data on the way (torch.onnx's threshold).
PROTOBUF_LIMIT_BYTES = 2**31 - 1
LARGE_GRAPH_BYTES = 3 * 2**29


def int8_path(path: str) -> str:
    """``x.onnx`` -> ``x.int8.onnx``."""
    return os.path.splitext(path)[0] + ".int8.onnx"


def quantize_int8(path: str, output: str) -> str:
    """Writes the int8 version of the exported image graph ``path`` to ``output`` (whole or
    not at all; never ``path`` itself) and returns ``output``. The text graph stays the
    original's (the int8 file names it, so keep the two files in one folder)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if os.path.realpath(path) == os.path.realpath(output):
        raise ValueError(f"{output} is the graph to quantize; choose another output")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: export it first (tools/export_onnx.py)")
    model = onnx.load(path)  # with its external data, if any (``deploy.external_data_path``)
    metadata = {p.key: p.value for p in model.metadata_props}
    fold_weight_transposes(model)
    large = sum(len(t.raw_data) for t in model.graph.initializer) > LARGE_GRAPH_BYTES
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".int8.") as tmp:
        folded = os.path.join(tmp, "folded.onnx")
        # the weights transposed ahead: what quantize_dynamic recognises; a graph over
        # protobuf's 2 GB keeps its weights in a file beside it
        onnx.save(model, folded, save_as_external_data=large, location="folded.onnx.data")
        del model
        quantized_path = os.path.join(tmp, "quantized.onnx")
        quantize_dynamic(
            folded, quantized_path, weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=large,
        )
        quantized = onnx.load(quantized_path)
        del quantized.metadata_props[:]
        for key, value in metadata.items():
            quantized.metadata_props.add(key=key, value=value)
        if quantized.ByteSize() > PROTOBUF_LIMIT_BYTES:
            raise ValueError(f"the int8 graph of {path} is over 2 GB; it cannot be one file")
        with atomic_write(output) as final:
            onnx.save(quantized, final)
    return output


def fold_weight_transposes(model) -> int:
    """Replaces every ``Transpose`` of an initializer (how torch.onnx writes ``nn.Linear``'s
    ``x @ W.T``) by the transposed initializer, in place; returns how many. Dynamic
    quantization only quantizes a MatMul whose weight is an initializer."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    folded = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[node.input[0]])
        model.graph.initializer.append(
            numpy_helper.from_array(weight.transpose(perm) if perm else weight.T, node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input}
    unused = [i for i in model.graph.initializer if i.name not in used and i.name in initializers]
    for initializer in unused:
        model.graph.initializer.remove(initializer)
    return len(folded)
