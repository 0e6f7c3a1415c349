"""Read a frozen TensorFlow GraphDef without TensorFlow.

A frozen graph is one protobuf message: its variables have been turned
into ``Const`` nodes, so the weights and the computation travel together.
The message classes come from the ``tensorboard`` package, which ships
TensorFlow's ``.proto`` definitions compiled for Python and needs nothing
of TensorFlow itself.

The reader returns the constants as numpy arrays, keyed by node name, and
every node as a small record (name, op, data inputs, decoded attributes):
enough to map the weights onto a PyTorch module and to evaluate the graph
with :mod:`export.tf_reference`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# TensorFlow's DataType enum values for the element types a frozen
# inference graph holds, with the numpy type and the TensorProto field that
# carries values written one by one instead of as raw bytes.
_DTYPES: dict[int, tuple[type[np.generic], str]] = {
    1: (np.float32, "float_val"),
    2: (np.float64, "double_val"),
    3: (np.int32, "int_val"),
    4: (np.uint8, "int_val"),
    5: (np.int16, "int_val"),
    6: (np.int8, "int_val"),
    9: (np.int64, "int64_val"),
    10: (np.bool_, "bool_val"),
}


class GraphDefError(ValueError):
    """The file is not a frozen GraphDef this reader understands."""


@dataclass(frozen=True)
class GraphNode:
    """One operation of the graph.

    ``inputs`` names the producing nodes of the data inputs, with the
    output index (``:0``) removed; control dependencies (``^name``) only
    order execution and are left out. ``attributes`` holds the op's
    attributes decoded to Python values, ``value`` of a ``Const`` excepted
    (it is in :attr:`FrozenGraph.constants`).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FrozenGraph:
    """The nodes of a frozen graph in file order and its constant values."""

    nodes: tuple[GraphNode, ...]
    constants: dict[str, np.ndarray]

    def node(self, name: str) -> GraphNode:
        for candidate in self.nodes:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def nodes_of(self, op: str) -> Iterator[GraphNode]:
        return (node for node in self.nodes if node.op == op)

    def consumers(self) -> dict[str, list[GraphNode]]:
        """Map each node name to the nodes that read its output."""
        readers: dict[str, list[GraphNode]] = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for source in node.inputs:
                readers[source].append(node)
        return readers


def read_graphdef(path: Path) -> FrozenGraph:
    """Parse the frozen GraphDef at ``path``."""
    # Imported here so that importing the exporter does not pull in the
    # protobuf runtime unless a TensorFlow graph is actually read.
    from tensorboard.compat.proto import graph_pb2

    message = graph_pb2.GraphDef()
    message.ParseFromString(path.read_bytes())
    if message.library.function:
        raise GraphDefError(f"{path.name} holds graph functions; it is not frozen")

    nodes = []
    constants = {}
    for proto in message.node:
        if proto.op == "Const":
            constants[proto.name] = tensor_to_array(proto.attr["value"].tensor)
        attributes = {
            key: _attribute_value(value)
            for key, value in proto.attr.items()
            if not (proto.op == "Const" and key == "value")
        }
        inputs = tuple(
            _producer(name) for name in proto.input if not name.startswith("^")
        )
        nodes.append(GraphNode(proto.name, proto.op, inputs, attributes))
    return FrozenGraph(tuple(nodes), constants)


def tensor_to_array(tensor: Any) -> np.ndarray:
    """Decode a ``TensorProto`` into a numpy array of its shape."""
    if tensor.dtype not in _DTYPES:
        raise GraphDefError(f"unsupported tensor element type {tensor.dtype}")
    dtype, value_field = _DTYPES[tensor.dtype]
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    size = int(np.prod(shape, dtype=np.int64))

    if tensor.tensor_content:
        # Raw bytes are in the host order of the machine that wrote them;
        # every TensorFlow platform is little-endian.
        flat = np.frombuffer(
            tensor.tensor_content, dtype=np.dtype(dtype).newbyteorder("<")
        )
    else:
        values = np.asarray(getattr(tensor, value_field), dtype=dtype)
        # TensorFlow stores a constant-filled tensor as one value (or a
        # short prefix); the last value given repeats to fill the shape.
        if 0 < len(values) < size:
            values = np.concatenate(
                [values, np.full(size - len(values), values[-1], dtype=dtype)]
            )
        flat = values if len(values) else np.zeros(size, dtype=dtype)
    if flat.size != size:
        raise GraphDefError(f"tensor holds {flat.size} values for shape {shape}")
    return flat.astype(dtype, copy=True).reshape(shape)


def _producer(input_name: str) -> str:
    name, _, index = input_name.partition(":")
    if index not in ("", "0"):
        raise GraphDefError(f"input {input_name} reads a second output of a node")
    return name


def _attribute_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "list":
        listed = value.list
        return list(listed.i) or list(listed.f) or [text.decode() for text in listed.s]
    if kind == "s":
        return value.s.decode()
    if kind == "shape":
        return [dim.size for dim in value.shape.dim]
    if kind == "tensor":
        return tensor_to_array(value.tensor)
    return getattr(value, kind) if kind else None
