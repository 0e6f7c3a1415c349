# syntax=docker/dockerfile:1
#
# CPU image of the vision service, built in two stages. The build stage
# installs PyTorch and runs the exporter, which writes the ONNX models and
# their manifest to models/. The runtime stage installs only the service
# (onnxruntime, no PyTorch) and copies models/ from the build stage, so the
# image ships the models it was built with and needs no download at start.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src

COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/

# The extra index serves the CPU-only torch wheel; the default wheel on PyPI
# bundles CUDA libraries that are gigabytes this stage never uses.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu '.[export]'

RUN python -m export


FROM python:3.11-slim AS runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The project is installed without extras, so without PyTorch, from a scratch
# copy of its sources that is then removed: /app keeps only the gunicorn
# settings and the models. export/ is copied so that the wheel is built from
# the same tree as in the build stage.
COPY pyproject.toml README.md /tmp/src/
COPY service/ /tmp/src/service/
COPY export/ /tmp/src/export/
RUN pip install /tmp/src && rm -rf /tmp/src

WORKDIR /app
COPY gunicorn.conf.py ./
COPY --from=build /src/models/ models/

# A fixed, unprivileged uid that owns nothing in the image: the code and the
# models stay read-only to the process that serves requests. USER is numeric
# so that Kubernetes can check runAsNonRoot against the image itself.
RUN groupadd --system --gid 10001 vision \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --shell /usr/sbin/nologin vision
USER 10001:10001

# The models directory is named explicitly because the installed package
# lives in site-packages, away from /app/models.
ENV VISION_BIND=0.0.0.0:8000 \
    VISION_MODELS_DIR=/app/models

EXPOSE 8000

# Slim images have no curl; urlopen raises on a refused connection and on
# the 503 that /readyz answers while models load, so either fails the probe.
# The port must follow VISION_BIND when that is overridden.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", \
         "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz')"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"]
