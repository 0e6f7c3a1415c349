"""Read the named constant tensors of an ONNX file as numpy arrays.

Some weights are published only as ONNX graphs. To rebuild such a network
in PyTorch the exporter needs the graph's constants by name: the
initializers, and the ``value`` of any ``Constant`` node, which some
converters use instead. Both are returned in one mapping; a name that
occurs twice is an error rather than a silent overwrite.

Weights stored as external data are refused: the pinned artifact is a
single file, and a graph that points outside it is not what was pinned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


class OnnxConstantsError(ValueError):
    """The ONNX file's constants cannot be read as a flat set of arrays."""


def read_onnx_constants(path: Path) -> dict[str, np.ndarray]:
    """Return every initializer and ``Constant`` node value of ``path``'s graph.

    Keys are the tensor names the graph's nodes use as inputs. Only the main
    graph is read; subgraphs (``If``/``Loop`` bodies) hold no weights in the
    networks this exporter converts.
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    constants: dict[str, np.ndarray] = {}

    for tensor in graph.initializer:
        _refuse_external(tensor, path)
        _add(constants, tensor.name, numpy_helper.to_array(tensor), path)

    for node in graph.node:
        if node.op_type != "Constant":
            continue
        _add(constants, node.output[0], _constant_value(node, path), path)
    return constants


def _constant_value(node: onnx.NodeProto, path: Path) -> np.ndarray:
    for attribute in node.attribute:
        if attribute.name == "value":
            _refuse_external(attribute.t, path)
            return numpy_helper.to_array(attribute.t)
    # value_float, value_ints and friends are legal too, but no converter this
    # exporter reads emits them; refusing them keeps the mapping honest.
    kinds = [attribute.name for attribute in node.attribute]
    raise OnnxConstantsError(
        f"{path.name}: Constant node {node.name or node.output[0]!r} holds "
        f"{kinds}, expected a 'value' tensor"
    )


def _refuse_external(tensor: onnx.TensorProto, path: Path) -> None:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise OnnxConstantsError(
            f"{path.name}: tensor {tensor.name!r} is stored outside the file"
        )


def _add(
    constants: dict[str, np.ndarray], name: str, value: np.ndarray, path: Path
) -> None:
    if name in constants:
        raise OnnxConstantsError(f"{path.name}: constant {name!r} is defined twice")
    constants[name] = value
