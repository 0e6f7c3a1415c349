"""Turn a PyTorch module into a checked ONNX file with symbolic axes.

The dynamo exporter is used with its graph optimiser on: it folds
BatchNorm into the convolutions and the explicit zero pads of
TensorFlow-style "SAME" padding into the ``Conv`` nodes' ``pads``, so the
graph onnxruntime sees is plain ``Conv``/``Clip``/``Add``. A stray ``Pad``
node would cost about 40 % of the speed, so its presence fails the export.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 18
FORBIDDEN_OPS = frozenset({"Pad"})
# The largest size any symbolic axis may take; far above real use.
MAX_DIM = 8192


class ExportError(RuntimeError):
    """The exported graph is malformed or not what the service expects."""


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: Sequence[str],
    symbolic_axes: dict[int, str] | None = None,
    min_sizes: dict[int, int] | None = None,
    forbidden_ops: frozenset[str] = FORBIDDEN_OPS,
) -> None:
    """Export ``module`` to ``path``.

    ``symbolic_axes`` maps input axes to names (default: axis 0, "batch");
    those axes accept any size from ``min_sizes`` (default 1) upwards.
    """
    axes = symbolic_axes or {0: "batch"}
    lowest = min_sizes or {}
    dynamic = {
        axis: torch.export.Dim(name, min=lowest.get(axis, 1), max=MAX_DIM)
        for axis, name in axes.items()
    }
    with warnings.catch_warnings():
        # The exporter narrates its internals through warnings; the checks
        # below are what decide whether the result is usable.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            optimize=True,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_shapes=(dynamic,),
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    check_onnx(path, input_name, output_names, sorted(axes), forbidden_ops)


def check_onnx(
    path: Path,
    input_name: str,
    output_names: Sequence[str],
    symbolic_axes: Sequence[int] = (0,),
    forbidden_ops: frozenset[str] = FORBIDDEN_OPS,
) -> None:
    """Run ``onnx.checker`` and check names, symbolic axes and operators."""
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    inputs = [value.name for value in graph.input]
    outputs = [value.name for value in graph.output]
    if inputs != [input_name] or outputs != list(output_names):
        raise ExportError(
            f"{path.name}: inputs {inputs} and outputs {outputs}, "
            f"expected {[input_name]} and {list(output_names)}"
        )
    dims = graph.input[0].type.tensor_type.shape.dim
    fixed = [axis for axis in symbolic_axes if not dims[axis].dim_param]
    if fixed:
        raise ExportError(f"{path.name}: axes {fixed} of {input_name} are fixed")
    found = forbidden_ops & {node.op_type for node in graph.node}
    if found:
        raise ExportError(f"{path.name}: graph contains {sorted(found)} nodes")
