"""Turn a PyTorch module into a checked ONNX file with a dynamic batch.

The dynamo exporter is used with its graph optimiser on: it folds
BatchNorm into the convolutions and the explicit zero pads of
TensorFlow-style "SAME" padding into the ``Conv`` nodes' ``pads``, so the
graph onnxruntime sees is plain ``Conv``/``Clip``/``Add``. A stray ``Pad``
node would cost about 40 % of the speed, so its presence fails the export.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 18
FORBIDDEN_OPS = frozenset({"Pad"})


class ExportError(RuntimeError):
    """The exported graph is malformed or not what the service expects."""


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
) -> None:
    """Export ``module`` to ``path`` with axis 0 of input and outputs dynamic."""
    batch = torch.export.Dim("batch", min=1, max=1024)
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
            output_names=output_names,
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    check_onnx(path, input_name, output_names)


def check_onnx(path: Path, input_name: str, output_names: list[str]) -> None:
    """Run ``onnx.checker`` and check names, batch axis and operator set."""
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    inputs = [value.name for value in graph.input]
    outputs = [value.name for value in graph.output]
    if inputs != [input_name] or outputs != output_names:
        raise ExportError(
            f"{path.name}: inputs {inputs} and outputs {outputs}, "
            f"expected {[input_name]} and {output_names}"
        )
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        raise ExportError(f"{path.name}: batch axis of {input_name} is fixed")
    found = FORBIDDEN_OPS & {node.op_type for node in graph.node}
    if found:
        raise ExportError(f"{path.name}: graph contains {sorted(found)} nodes")
