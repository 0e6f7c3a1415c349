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

from service.errors import UnknownModel
from service.manifest import Manifest, ModelContractError, load_manifest
from service.runtime import choose_providers, create_session
from service.settings import Settings
from service.vision.classifier import Classifier

logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"


class ModelRegistry:
    """Loaded models by name, and whether they are warmed up."""

    def __init__(
        self, manifest: Manifest, classifiers: dict[str, Classifier], default: str
    ) -> None:
        self.manifest = manifest
        self.classifiers = classifiers
        self.default_classifier = default
        self.ready = threading.Event()
        self.failure: str | None = None

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        manifest = load_manifest(settings.models_dir)
        providers = choose_providers(settings.providers)
        logger.info("onnxruntime providers: %s", ", ".join(providers))
        classifiers = {}
        for spec in manifest.models:
            if spec.task != CLASSIFICATION:
                logger.warning("skipping model %s: task %s", spec.name, spec.task)
                continue
            session = create_session(spec, providers, settings.threads)
            classifiers[spec.name] = Classifier(spec, session)
        default = settings.default_model or manifest.defaults.get(CLASSIFICATION, "")
        if default not in classifiers:
            raise ModelContractError(
                f"default classifier {default!r} is not among the loaded models "
                f"({', '.join(classifiers) or 'none'})"
            )
        return cls(manifest, classifiers, default)

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
        except Exception as error:
            self.failure = f"warming up the models failed: {error}"
            logger.exception("warming up the models failed")
            return
        self.ready.set()
        logger.info("models ready: %s", ", ".join(self.classifiers))

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

    def describe(self) -> list[dict[str, Any]]:
        """Describe every loaded model for ``GET /v1/models``."""
        return [
            {
                "name": spec.name,
                "version": spec.version,
                "task": spec.task,
                "default": spec.name == self.default_classifier,
                "inputs": [tensor.as_dict() for tensor in spec.inputs],
                "outputs": [tensor.as_dict() for tensor in spec.outputs],
                "preprocessing": spec.preprocessing,
                "source": {
                    key: spec.source[key]
                    for key in ("artifact", "file", "sha256", "license")
                    if key in spec.source
                },
                "providers": list(classifier.session.get_providers()),
            }
            for classifier in self.classifiers.values()
            for spec in [classifier.spec]
        ]
