"""FaceNet's embedder: the frozen TensorFlow graph, its PyTorch port, ONNX.

The port is checked three ways: the loader must account for every weight
of the graph and refuse a graph that differs; the module must compute what
the graph itself computes, evaluated op by op in numpy; and the ONNX export
must compute what the module does. On real photographs the embeddings must
then behave like identity embeddings: one face under a mirror, a reframing
or a loss of colour stays close to itself and far from another person.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
import torch
from PIL import Image

from export.artifacts import default_cache_dir, fetch
from export.nets.inception_resnet_v1 import (
    FACENET_WEIGHTS,
    INPUT_MEAN,
    INPUT_SIZE,
    INPUT_STD,
    InceptionResnetV1,
    facenet_from_graph,
    graph_state_dict,
)
from export.readers.tf_graphdef import FrozenGraph, GraphNode, read_graphdef
from export.readers.torch_state import WeightsMismatchError
from export.tf_reference import evaluate

# Float32 sums in a different order (numpy's BLAS against PyTorch's or
# onnxruntime's kernels) move components of these unit vectors by about
# 1e-7. A real mapping mistake moves them by 1e-2 or more: one residual
# scale off by 0.07 moves them by 1.5e-2, a ReLU too many by 8e-2.
EMBEDDING_TOLERANCE = 1e-5

# Hand-picked crops of scikit-image's photographs as (rows, columns): the
# astronaut's face with the margin FaceNet's crops have, the same face
# framed wider and off-centre, and the cameraman's head.
ASTRONAUT_FACE = (slice(45, 195), slice(150, 300))
ASTRONAUT_FACE_REFRAMED = (slice(35, 205), slice(145, 315))
CAMERAMAN_HEAD = (slice(60, 200), slice(150, 290))

KERNEL_1X7 = "InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights"
BLOCK35_BIASES = "InceptionResnetV1/Repeat/block35_2/Conv2d_1x1/biases"
BLOCK17_SCALE = "InceptionResnetV1/Repeat_1/block17_4/mul/x"
STEM_CONV = "InceptionResnetV1/Conv2d_2b_3x3/Conv2D"


@pytest.fixture(scope="module")
def graph() -> FrozenGraph:
    return read_graphdef(fetch(FACENET_WEIGHTS, default_cache_dir()))


@pytest.fixture(scope="module")
def module(graph: FrozenGraph) -> InceptionResnetV1:
    return facenet_from_graph(graph, source="graph_final.pb")


@pytest.fixture(scope="module")
def onnx_path(models_dir: Path) -> Path:
    """The graph ``python -m export`` wrote for the service."""
    return models_dir / "facenet.onnx"


def astronaut_face() -> np.ndarray:
    return skimage.data.astronaut()[ASTRONAUT_FACE]


def cameraman_head() -> np.ndarray:
    return np.stack([skimage.data.camera()[CAMERAMAN_HEAD]] * 3, axis=-1)


def face_input(rgb: np.ndarray) -> np.ndarray:
    """Resize an RGB crop to 160x160 and normalise it, as NHWC float32."""
    image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
    resized = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32)
    return (pixels - np.float32(INPUT_MEAN)) / np.float32(INPUT_STD)


def nchw_batch(crops: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(
        np.stack([face_input(crop).transpose(2, 0, 1) for crop in crops])
    )


def embed(module: InceptionResnetV1, crops: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = module(torch.from_numpy(nchw_batch(crops))).numpy()
    return result


def graph_embedding(graph: FrozenGraph, crop: np.ndarray) -> np.ndarray:
    # The frozen graph's reshapes fix the batch at one image.
    return evaluate(graph, {"input": face_input(crop)[None]}, "embeddings")


def test_every_weight_of_the_graph_fills_one_parameter(
    graph: FrozenGraph, module: InceptionResnetV1
) -> None:
    state = graph_state_dict(graph)
    convolutions = sum(1 for _ in graph.nodes_of("Conv2D"))
    expected = {
        key for key in module.state_dict() if not key.endswith("num_batches_tracked")
    }

    assert convolutions == 132
    # A kernel and a bias per convolution, the bottleneck matrix and its
    # BatchNorm's scale, shift, mean and variance.
    assert len(state) == 2 * convolutions + 5
    assert set(state) == expected
    assert sum(p.numel() for p in module.parameters()) == sum(
        tensor.numel() for key, tensor in state.items() if "running" not in key
    )


def _replace_constant(graph: FrozenGraph, name: str, value: np.ndarray) -> FrozenGraph:
    return FrozenGraph(graph.nodes, {**graph.constants, name: value})


def _rename_constant(graph: FrozenGraph, name: str, new_name: str) -> FrozenGraph:
    def renamed(node: GraphNode) -> GraphNode:
        inputs = tuple(new_name if source == name else source for source in node.inputs)
        return dataclasses.replace(
            node, name=new_name if node.name == name else node.name, inputs=inputs
        )

    constants = dict(graph.constants)
    constants[new_name] = constants.pop(name)
    return FrozenGraph(tuple(renamed(node) for node in graph.nodes), constants)


def _with_valid_padding(graph: FrozenGraph, name: str) -> FrozenGraph:
    def changed(node: GraphNode) -> GraphNode:
        if node.name != name:
            return node
        return dataclasses.replace(
            node, attributes={**node.attributes, "padding": "VALID"}
        )

    return FrozenGraph(tuple(changed(node) for node in graph.nodes), graph.constants)


def _with_unread_constant(graph: FrozenGraph) -> FrozenGraph:
    extra = GraphNode("InceptionResnetV1/Logits/weights", "Const", ())
    constants = {**graph.constants, extra.name: np.zeros((1792, 10), np.float32)}
    return FrozenGraph((*graph.nodes, extra), constants)


MUTATIONS = {
    "kernel of the wrong shape": (
        lambda graph: _replace_constant(
            graph, KERNEL_1X7, graph.constants[KERNEL_1X7].transpose(1, 0, 2, 3)
        ),
        "repeat_1.2.branch_1.conv2d_0b_1x7.weight is",
    ),
    "constant under another name": (
        lambda graph: _rename_constant(graph, BLOCK35_BIASES, BLOCK35_BIASES + "_1"),
        "missing repeat.1.conv2d_1x1.bias",
    ),
    "residual scale differs": (
        lambda graph: _replace_constant(graph, BLOCK17_SCALE, np.float32(0.2)),
        "repeat_1.3 scale 0.1",
    ),
    "padding differs": (
        lambda graph: _with_valid_padding(graph, STEM_CONV),
        "conv2d_2b_3x3 has",
    ),
    "weights nothing reads": (_with_unread_constant, "read by no node"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_loader_refuses_a_graph_that_differs(graph: FrozenGraph, mutation: str) -> None:
    change, message = MUTATIONS[mutation]

    with pytest.raises(WeightsMismatchError, match=message):
        facenet_from_graph(change(graph), source="changed.pb")


CROPS = {
    "astronaut face": astronaut_face,
    "astronaut photo": skimage.data.astronaut,
    "cameraman head": cameraman_head,
}


@pytest.mark.parametrize("crop", sorted(CROPS))
def test_module_computes_what_the_tensorflow_graph_computes(
    graph: FrozenGraph, module: InceptionResnetV1, crop: str
) -> None:
    image = CROPS[crop]()

    expected = graph_embedding(graph, image)
    found = embed(module, [image])

    assert np.abs(found - expected).max() <= EMBEDDING_TOLERANCE


def test_reference_comparison_catches_a_missing_activation(
    graph: FrozenGraph, module: InceptionResnetV1
) -> None:
    expected = graph_embedding(graph, astronaut_face())
    module.block8.activation = True
    try:
        wrong = embed(module, [astronaut_face()])
    finally:
        module.block8.activation = False

    assert np.abs(wrong - expected).max() > 100 * EMBEDDING_TOLERANCE


def test_embeddings_have_unit_length(module: InceptionResnetV1) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    grey = np.full((160, 160, 3), 128, dtype=np.uint8)
    crops = [astronaut_face(), skimage.data.coffee(), noise, grey]

    norms = np.linalg.norm(embed(module, crops), axis=1)

    np.testing.assert_allclose(norms, 1.0, atol=EMBEDDING_TOLERANCE)


def test_a_face_is_closer_to_itself_than_to_another_face(
    module: InceptionResnetV1,
) -> None:
    face = astronaut_face()
    grey_face = np.repeat(face.mean(axis=2, keepdims=True), 3, axis=2)
    same_person = [
        face[:, ::-1],
        skimage.data.astronaut()[ASTRONAUT_FACE_REFRAMED],
        grey_face.astype(np.uint8),
    ]
    embeddings = embed(module, [face, *same_person, cameraman_head()])

    similarities = embeddings[1:] @ embeddings[0]
    same, other = similarities[:-1], similarities[-1]

    # The grey copy shows that the other face is far because it is another
    # person, not because the cameraman's photo has no colour.
    assert same.min() > 0.8
    assert other < 0.5
    assert same.min() - other > 0.4


def test_onnx_graph_has_the_served_contract(onnx_path: Path) -> None:
    graph = onnx.load(str(onnx_path)).graph

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        shape = value.type.tensor_type.shape.dim
        return [dim.dim_param or dim.dim_value for dim in shape]

    assert [value.name for value in graph.input] == ["image"]
    assert [value.name for value in graph.output] == ["embedding"]
    assert dims(graph.input[0]) == ["batch", 3, INPUT_SIZE, INPUT_SIZE]
    assert dims(graph.output[0]) == ["batch", 512]
    assert "Pad" not in {node.op_type for node in graph.node}


def test_onnx_matches_pytorch_at_every_batch_size(
    module: InceptionResnetV1, onnx_path: Path
) -> None:
    face = astronaut_face()
    batch = nchw_batch(
        [face, face[:, ::-1], cameraman_head(), skimage.data.astronaut()]
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    batched = session.run(None, {"image": batch})[0]
    single = np.concatenate(
        [session.run(None, {"image": batch[i : i + 1]})[0] for i in range(len(batch))]
    )

    assert np.abs(batched - expected).max() <= EMBEDDING_TOLERANCE
    assert np.abs(single - expected).max() <= EMBEDDING_TOLERANCE
    np.testing.assert_allclose(
        np.linalg.norm(batched, axis=1), 1.0, atol=EMBEDDING_TOLERANCE
    )
