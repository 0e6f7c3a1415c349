"""The models one worker serves, loaded from the manifest at start-up.

Sessions are created and checked against the manifest synchronously, so a
broken models folder stops the worker with a clear message. Warming them
up (the first run allocates buffers and, on CUDA, tunes kernels) happens on
a background thread; ``/readyz`` answers 503 until it is done.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from service.batching import BatchedSession, batchable
from service.errors import NotReady, UnknownModel
from service.manifest import Manifest, ModelContractError, ModelSpec, load_manifest
from service.metrics import MODEL_INFO
from service.runtime import MeasuredSession, choose_providers, create_session
from service.settings import Settings
from service.vision.classifier import Classifier
from service.vision.faces import FaceAnalyzer, Model

logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
FACE_TASKS = {
    "pnet": "face-detection",
    "rnet": "face-detection",
    "onet": "face-detection",
    "embedder": "face-embedding",
    "age": "age-estimation",
    "gender": "gender-classification",
}


class ModelRegistry:
    """Loaded models by name, and whether they are warmed up."""

    def __init__(
        self,
        manifest: Manifest,
        models: dict[str, Model],
        classifiers: dict[str, Classifier],
        default: str,
        faces: FaceAnalyzer | None,
        defaults: dict[str, str] | None = None,
    ) -> None:
        self.manifest = manifest
        # The model each task uses when a request names none: the
        # manifest's, as the settings override them.
        self.defaults = dict(manifest.defaults if defaults is None else defaults)
        self.models = models
        self.classifiers = classifiers
        self.default_classifier = default
        self.faces = faces
        self.ready = threading.Event()
        self.failure: str | None = None

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        manifest = load_manifest(settings.models_dir)
        providers = choose_providers(settings.providers)
        logger.info("onnxruntime providers: %s", ", ".join(providers))
        models = {
            spec.name: Model(spec, _session(spec, providers, settings))
            for spec in manifest.models
        }
        classifiers = {
            name: Classifier(model.spec, model.session)
            for name, model in models.items()
            if model.spec.task == CLASSIFICATION
        }
        default = settings.default_model or manifest.defaults.get(CLASSIFICATION, "")
        if default not in classifiers:
            raise ModelContractError(
                f"default classifier {default!r} is not among the loaded models "
                f"({', '.join(classifiers) or 'none'})"
            )
        defaults = dict(manifest.defaults)
        if settings.face_embedder:
            defaults[FACE_TASKS["embedder"]] = settings.face_embedder
        faces = _face_analyzer(models, defaults)
        for model in models.values():
            _publish(model)
        return cls(manifest, models, classifiers, default, faces, defaults)

    def start_warm_up(self) -> threading.Thread:
        # Not a daemon: a worker told to stop mid-warm-up waits for the run
        # in progress, since tearing down onnxruntime under a running
        # session aborts the process.
        thread = threading.Thread(target=self._warm_up, name="model-warm-up")
        thread.start()
        return thread

    def _warm_up(self) -> None:
        try:
            for name, classifier in self.classifiers.items():
                classifier.warm_up()
                logger.debug("warmed up %s", name)
            if self.faces is not None:
                self.faces.warm_up()
        except Exception as error:
            self.failure = f"warming up the models failed: {error}"
            logger.exception("warming up the models failed")
            return
        self.ready.set()
        logger.info("models ready: %s", ", ".join(self.models))

    def classifier(self, name: str | None) -> Classifier:
        """Return the classifier called ``name``, or the default one."""
        if not name:
            return self.classifiers[self.default_classifier]
        try:
            return self.classifiers[name]
        except KeyError:
            raise UnknownModel(
                f"model {name!r} is not a loaded classification model; "
                f"available: {', '.join(self.classifiers)}."
            ) from None

    def face_analyzer(self) -> FaceAnalyzer:
        if self.faces is None:
            raise NotReady(
                "The face models are not installed; rebuild them with "
                "`python -m export`."
            )
        return self.faces

    def _default_for(self, task: str) -> str | None:
        if task == CLASSIFICATION:
            return self.default_classifier
        return self.defaults.get(task)

    def describe(self) -> list[dict[str, Any]]:
        """Describe every loaded model for ``GET /v1/models``."""
        return [
            {
                "name": spec.name,
                "version": spec.version,
                "task": spec.task,
                "default": spec.name == self._default_for(spec.task),
                "inputs": [tensor.as_dict() for tensor in spec.inputs],
                "outputs": [tensor.as_dict() for tensor in spec.outputs],
                "preprocessing": spec.preprocessing,
                "source": {
                    key: spec.source[key]
                    for key in ("artifact", "file", "sha256", "license")
                    if key in spec.source
                },
                "providers": list(model.session.get_providers()),
            }
            for model in self.models.values()
            for spec in [model.spec]
        ]


def _session(spec: ModelSpec, providers: list[str], settings: Settings) -> Any:
    """The model's session, its runs measured, behind a micro-batcher when
    batching is on and the input stacks across requests (not P-Net's, whose
    size varies)."""
    require_cuda = settings.providers == "cuda"
    session = MeasuredSession(
        create_session(spec, providers, settings.threads, require_cuda=require_cuda),
        spec.name,
    )
    if settings.batch_window_ms and batchable(spec.inputs[0].shape):
        return BatchedSession(
            session, settings.batch_window_ms / 1000, settings.max_batch
        )
    return session


def _publish(model: Model) -> None:
    """Show ``model`` as loaded in ``vision_model_info``."""
    spec = model.spec
    providers = ",".join(model.session.get_providers())
    MODEL_INFO.labels(spec.name, spec.version, spec.task, providers).set(1)


def _face_analyzer(
    models: dict[str, Model], defaults: dict[str, str]
) -> FaceAnalyzer | None:
    """Assemble the face pipeline from the manifest's face models, if any.

    A role that several models can fill (FaceNet and its int8 variant both
    embed) takes the one ``defaults`` names for its task.
    """
    candidates: dict[str, list[Model]] = {}
    for model in models.values():
        task = model.spec.task
        role = model.spec.preprocessing.get("role")
        if task in FACE_TASKS.values() and isinstance(role, str):
            candidates.setdefault(role, []).append(model)
    if not candidates:
        return None
    missing = sorted(set(FACE_TASKS) - set(candidates))
    if missing:
        raise ModelContractError(
            f"the manifest has face models but none for {', '.join(missing)}"
        )
    by_role = {
        role: _choose(role, options, defaults.get(FACE_TASKS[role]))
        for role, options in candidates.items()
        if role in FACE_TASKS
    }
    return FaceAnalyzer(**by_role)


def _choose(role: str, options: list[Model], default: str | None) -> Model:
    if len(options) == 1 and default in (None, options[0].spec.name):
        return options[0]
    for model in options:
        if model.spec.name == default:
            return model
    names = ", ".join(model.spec.name for model in options)
    raise ModelContractError(
        f"the {role} of the face pipeline is one of {names}; the default "
        f"{FACE_TASKS[role]} model {default!r} is none of them"
    )
