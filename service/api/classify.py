"""``POST /v1/classify``: ImageNet classes of one or more images."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service.api.context import state
from service.api.inputs import int_option, read_image_request, str_option
from service.imaging import decode_image
from service.timing import (
    DECODE,
    INFERENCE,
    POSTPROCESS,
    RECEIVE,
    json_response,
    stage,
)

blueprint = Blueprint("classify", __name__)

TOP_K_DEFAULT = 5
TOP_K_MAX = 20


@blueprint.post("/v1/classify")
def classify() -> Response:
    settings, registry = state().settings, state().registry
    with stage(RECEIVE):
        parsed = read_image_request(request, settings.max_images)
    top_k = int_option(parsed.options, "top_k", TOP_K_DEFAULT, 1, TOP_K_MAX)
    classifier = registry.classifier(str_option(parsed.options, "model"))

    with stage(DECODE):
        images = [
            decode_image(
                data,
                max_pixels=settings.max_pixels,
                min_side=classifier.min_side,
                label=label,
            )
            for data, label in zip(parsed.images, parsed.labels, strict=True)
        ]
    # Preprocessing and the top-k selection happen inside classify(); they
    # count here unless the classifier marks them as stages of their own.
    with stage(INFERENCE):
        predictions = classifier.classify(images, top_k)

    with stage(POSTPROCESS):
        body = {
            "model": {
                "name": classifier.spec.name,
                "version": classifier.spec.version,
            },
            "results": [
                {
                    "predictions": [
                        {
                            "label": p.label,
                            "wnid": p.wnid,
                            "index": p.index,
                            "probability": round(p.probability, 6),
                        }
                        for p in image_predictions
                    ]
                }
                for image_predictions in predictions
            ],
        }
    return json_response(body)
