"""onnxruntime sessions: provider choice, threads, the load-time check of
each session against its manifest entry, and the measurement of each run.

Options are set explicitly rather than left to onnxruntime's defaults,
because the defaults assume one session owns the machine: here gunicorn
runs several workers, and workers x intra-op threads must not exceed the
cores or every request slows down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from service.manifest import ModelContractError, ModelSpec, TensorSpec
from service.metrics import INFERENCE_BATCH_SIZE, INFERENCE_DURATION

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class ProviderUnavailable(RuntimeError):
    """``VISION_PROVIDERS=cuda``, and onnxruntime cannot run the models on
    CUDA here (no onnxruntime-gpu, no GPU visible, or CUDA libraries missing)."""


def choose_providers(preference: str) -> list[str]:
    """Return the providers for ``preference`` (auto, cpu or cuda).

    ``auto`` takes CUDA when onnxruntime offers it and the CPU otherwise.
    ``cuda`` insists: a GPU image started on a host without a GPU should
    stop, not serve many times slower on the CPU, so it raises
    ``ProviderUnavailable`` when onnxruntime has no CUDA provider.
    """
    available = ort.get_available_providers()
    if preference == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if preference == "cuda":
        raise ProviderUnavailable(
            "VISION_PROVIDERS=cuda, but onnxruntime offers only "
            f"{', '.join(available)}: install onnxruntime-gpu in place of "
            "onnxruntime, or set VISION_PROVIDERS=auto to run on the CPU"
        )
    return [CPU]


def session_options(threads: int) -> ort.SessionOptions:
    """The options every session of the service gets, chosen by measurement
    (``bench/session_options.py``): full graph optimisation, with its layout
    changes, and onnxruntime's memory arena and patterns left on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One graph at a time per request; parallelism comes from workers and
    # intra-op threads, so the inter-op pool would only add threads.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def create_session(
    spec: ModelSpec, providers: list[str], threads: int, *, require_cuda: bool = False
) -> ort.InferenceSession:
    """Open the model's ONNX file and check it against ``spec``.

    onnxruntime-gpu lists its CUDA provider even where CUDA cannot start,
    and then quietly runs the session on the CPU; with ``require_cuda``
    that raises ``ProviderUnavailable`` instead of a warning.
    """
    session = ort.InferenceSession(
        str(spec.path), sess_options=session_options(threads), providers=providers
    )
    check_session(session, spec)
    if CUDA in providers and CUDA not in session.get_providers():
        if require_cuda:
            raise ProviderUnavailable(
                f"model {spec.name}: VISION_PROVIDERS=cuda, but onnxruntime "
                "could not start CUDA (is a GPU visible to this process, with "
                "the CUDA and cuDNN libraries onnxruntime-gpu needs?)"
            )
        logger.warning("model %s: CUDA could not start; using the CPU", spec.name)
    logger.info(
        "loaded model %s %s from %s with %s, %d intra-op threads",
        spec.name,
        spec.version,
        spec.path,
        ", ".join(session.get_providers()),
        threads,
    )
    return session


def check_session(session: ort.InferenceSession, spec: ModelSpec) -> None:
    """Raise ``ModelContractError`` unless the graph matches the manifest."""
    _compare(spec.name, "input", session.get_inputs(), spec.inputs)
    _compare(spec.name, "output", session.get_outputs(), spec.outputs)


def _compare(
    model: str, kind: str, actual: list[ort.NodeArg], expected: tuple[TensorSpec, ...]
) -> None:
    found = [
        TensorSpec(
            arg.name,
            tuple(d if isinstance(d, int) else str(d) for d in arg.shape),
            _ONNX_DTYPES.get(arg.type, arg.type),
        )
        for arg in actual
    ]
    if len(found) != len(expected):
        raise ModelContractError(
            f"model {model}: graph has {len(found)} {kind}s, manifest lists "
            f"{len(expected)}"
        )
    for have, want in zip(found, expected, strict=True):
        if have.name != want.name or have.dtype != want.dtype:
            raise ModelContractError(
                f"model {model}: {kind} is {have.name} ({have.dtype}), manifest "
                f"says {want.name} ({want.dtype})"
            )
        if _fixed_dims(have.shape) != _fixed_dims(want.shape):
            raise ModelContractError(
                f"model {model}: {kind} {have.name} has shape "
                f"{list(have.shape)}, manifest says {list(want.shape)}"
            )


def _fixed_dims(shape: tuple[int | str, ...]) -> list[int | None]:
    """Sizes of the fixed axes, None for symbolic ones, whatever their name."""
    return [d if isinstance(d, int) else None for d in shape]


class MeasuredSession:
    """An onnxruntime session whose runs are timed and counted, per model,
    in ``vision_inference_duration_seconds`` and ``_batch_size``.

    It stands under the micro-batcher, if there is one, so that a merged
    batch counts as the one run it is, with all its rows.
    """

    def __init__(self, session: ort.InferenceSession, model: str) -> None:
        self.session = session
        self._duration = INFERENCE_DURATION.labels(model)
        self._batch_size = INFERENCE_BATCH_SIZE.labels(model)

    def __getattr__(self, name: str) -> Any:
        # get_inputs, get_outputs, get_providers... come from the session.
        return getattr(self.session, name)

    def run(
        self,
        output_names: list[str] | None,
        feeds: dict[str, np.ndarray],
        run_options: ort.RunOptions | None = None,
    ) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs: list[np.ndarray] = self.session.run(output_names, feeds, run_options)
        self._duration.observe(time.perf_counter() - started)
        # Every input of a graph shares the batch axis; the first tells it.
        self._batch_size.observe(len(next(iter(feeds.values()))))
        return outputs
