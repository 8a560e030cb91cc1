# The farm image: every farm process (worker, api, flower, migrate) runs from it.
#
# Default: CPU torch, for development and CPU workers (the built-in tiny model):
#   docker build -t farm:dev .
# GPU workers: a CUDA runtime base and the matching torch wheel index, e.g.
#   docker build -t farm:gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# (on a CUDA base image without Python 3.11, install python3.11 + venv first; see ops/README.md).
# Model weights are never baked in: mount them read-only at FARM_MODEL_DIR (/models).
# No secret is baked in either: they come from the environment at run time (ops/secrets/).

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 farm \
    && mkdir -p /app /data/outputs /models \
    && chown -R farm:farm /app /data

WORKDIR /app

# torch first, from the chosen index, so nothing later pulls a different (CUDA) build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Only what the package needs: never the working tree (ops/secrets/, .venv, data).
COPY pyproject.toml README.md ./
COPY farm ./farm
COPY migrations ./migrations
# Editable: the Alembic scripts are found next to the package (farm/ledger/db.py).
RUN pip install -e ".[engine,ops]"

USER farm
EXPOSE 8400 5555 9400
CMD ["farm", "--help"]
