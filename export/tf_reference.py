"""Evaluate a frozen TensorFlow graph in numpy, as the source of truth.

TensorFlow cannot be installed beside the exporter, yet a PyTorch port of
a TensorFlow network must be checked against what the original graph
computes: comparing PyTorch with its own ONNX export cannot catch a weight
mapped to the wrong layer, a transposed kernel or a missing activation.
This module runs the graph node by node with TensorFlow's semantics
(NHWC tensors, HWIO kernels, "SAME"/"VALID" padding as TensorFlow computes
it) for the operations inference graphs of convolutional networks use.
Any other operation, or an attribute this evaluator does not implement,
raises instead of being approximated.

Each convolution is one matrix product over sliding windows, so an
Inception-ResNet at 160x160 takes a fraction of a second per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from export.readers.tf_graphdef import FrozenGraph, GraphNode


class UnsupportedOpError(NotImplementedError):
    """The graph uses an operation or attribute the evaluator lacks."""


def evaluate(
    graph: FrozenGraph, feeds: dict[str, np.ndarray], output: str
) -> np.ndarray:
    """Return the value of node ``output`` given values for placeholders."""
    values: dict[str, np.ndarray] = {}
    for node in _execution_order(graph, output):
        if node.op == "Placeholder":
            values[node.name] = np.asarray(feeds[node.name], dtype=np.float32)
        elif node.op == "Const":
            values[node.name] = graph.constants[node.name]
        else:
            operation = _OPERATIONS.get(node.op)
            if operation is None:
                raise UnsupportedOpError(f"{node.name}: op {node.op}")
            arguments = [values[name] for name in node.inputs]
            values[node.name] = operation(node, arguments)
    return values[output]


def _execution_order(graph: FrozenGraph, output: str) -> list[GraphNode]:
    """Nodes that ``output`` depends on, each after all of its inputs."""
    by_name = {node.name: node for node in graph.nodes}
    order: list[GraphNode] = []
    state: dict[str, bool] = {}  # False while being expanded, True when placed
    stack = [(output, False)]
    # An explicit stack instead of recursion: deep networks chain hundreds
    # of nodes, past Python's recursion limit.
    while stack:
        name, inputs_done = stack.pop()
        if inputs_done:
            state[name] = True
            order.append(by_name[name])
            continue
        if name in state:
            if not state[name]:
                raise ValueError(f"graph has a cycle through {name}")
            continue
        state[name] = False
        stack.append((name, True))
        stack.extend((source, False) for source in by_name[name].inputs)
    return order


def _padding(padding: str, length: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's (before, after) padding of one spatial axis."""
    if padding == "VALID":
        return 0, 0
    if padding != "SAME":
        raise UnsupportedOpError(f"padding {padding}")
    # "SAME" keeps ceil(length / stride) outputs; an odd total puts the
    # extra element after, which is not what a symmetric pad would do.
    outputs = math.ceil(length / stride)
    total = max((outputs - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def _windows(
    x: np.ndarray,
    kernel: tuple[int, int],
    strides: list[int],
    padding: str,
    fill: float,
) -> np.ndarray:
    """Sliding windows of an NHWC tensor: [N, H', W', C, kh, kw]."""
    pads = [
        _padding(padding, x.shape[axis], kernel[axis - 1], strides[axis])
        for axis in (1, 2)
    ]
    padded = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=fill)
    windows = sliding_window_view(padded, kernel, axis=(1, 2))
    return windows[:, :: strides[1], :: strides[2]]


def _check_nhwc(node: GraphNode) -> None:
    if node.attributes.get("data_format", "NHWC") != "NHWC":
        raise UnsupportedOpError(f"{node.name}: data_format other than NHWC")
    if any(rate != 1 for rate in node.attributes.get("dilations", [1])):
        raise UnsupportedOpError(f"{node.name}: dilated convolution")


def _conv2d(node: GraphNode, args: list[np.ndarray]) -> np.ndarray:
    _check_nhwc(node)
    x, kernel = args  # kernel is [kh, kw, in, out]
    strides = node.attributes["strides"]
    windows = _windows(x, kernel.shape[:2], strides, node.attributes["padding"], 0.0)
    # windows: [N, H', W', in, kh, kw]; contract over in, kh, kw.
    result = np.tensordot(windows, kernel.transpose(2, 0, 1, 3), axes=3)
    return result.astype(np.float32)


def _pool(reduce: Callable[..., np.ndarray], fill: float) -> Callable[..., np.ndarray]:
    def pool(node: GraphNode, args: list[np.ndarray]) -> np.ndarray:
        _check_nhwc(node)
        size = node.attributes["ksize"]
        if size[0] != 1 or size[3] != 1:
            raise UnsupportedOpError(f"{node.name}: pooling across batch or depth")
        padding = node.attributes["padding"]
        if reduce is np.mean and padding != "VALID":
            # TensorFlow averages "SAME" windows over their real elements
            # only; no graph read here needs that, so it is not guessed at.
            raise UnsupportedOpError(f"{node.name}: average pooling with SAME")
        windows = _windows(
            args[0], (size[1], size[2]), node.attributes["strides"], padding, fill
        )
        return reduce(windows, axis=(-2, -1)).astype(np.float32)

    return pool


def _matmul(node: GraphNode, args: list[np.ndarray]) -> np.ndarray:
    a, b = args
    if node.attributes.get("transpose_a"):
        a = a.T
    if node.attributes.get("transpose_b"):
        b = b.T
    return a @ b


def _fused_batch_norm(node: GraphNode, args: list[np.ndarray]) -> np.ndarray:
    _check_nhwc(node)
    if node.attributes.get("is_training", False):
        raise UnsupportedOpError(f"{node.name}: batch norm in training mode")
    x, scale, offset, mean, variance = args[:5]
    epsilon = np.float32(node.attributes["epsilon"])
    return (x - mean) / np.sqrt(variance + epsilon) * scale + offset


def _concat(node: GraphNode, args: list[np.ndarray]) -> np.ndarray:
    *tensors, axis = args
    return np.concatenate(tensors, axis=int(axis))


def _sum(node: GraphNode, args: list[np.ndarray]) -> np.ndarray:
    x, axes = args
    keep = bool(node.attributes.get("keep_dims", False))
    return np.sum(x, axis=tuple(np.atleast_1d(axes).tolist()), keepdims=keep)


def _bias_add(node: GraphNode, args: list[np.ndarray]) -> np.ndarray:
    _check_nhwc(node)
    return args[0] + args[1]


_OPERATIONS: dict[str, Callable[[GraphNode, list[np.ndarray]], np.ndarray]] = {
    "Identity": lambda node, args: args[0],
    "Conv2D": _conv2d,
    "BiasAdd": _bias_add,
    "Add": lambda node, args: args[0] + args[1],
    "AddV2": lambda node, args: args[0] + args[1],
    "Sub": lambda node, args: args[0] - args[1],
    "Mul": lambda node, args: args[0] * args[1],
    "Maximum": lambda node, args: np.maximum(args[0], args[1]),
    "Relu": lambda node, args: np.maximum(args[0], np.float32(0)),
    "Relu6": lambda node, args: np.clip(args[0], np.float32(0), np.float32(6)),
    "Square": lambda node, args: np.square(args[0]),
    "Rsqrt": lambda node, args: np.float32(1) / np.sqrt(args[0]),
    "Reshape": lambda node, args: np.reshape(args[0], args[1].tolist()),
    "MaxPool": _pool(np.max, -np.inf),
    "AvgPool": _pool(np.mean, 0.0),
    "ConcatV2": _concat,
    "MatMul": _matmul,
    "Sum": _sum,
    "FusedBatchNorm": _fused_batch_norm,
    "FusedBatchNormV3": _fused_batch_norm,
}
