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

# Exact versions of everything (constraints.txt, written by `scripts/dev lock`), except torch:
# TORCH_VERSION and TORCH_INDEX_URL choose its build (2.13.0+cpu, 2.13.0+cu128, ...). So torch's
# line is replaced by `torch==${TORCH_VERSION}` in a copy of the lock (a pin without a local label
# admits any build of that version). torch itself comes from its index WITHOUT dependencies (that
# index mirrors few versions of them); the next install resolves its dependencies from PyPI under
# the lock: filelock, sympy, ... at the locked versions, and for a CUDA build the nvidia-* and
# triton wheels that torch's own metadata pins exactly (the CPU lock does not list them).
COPY constraints.txt ./
RUN { grep -v -i -E '^torch[[:space:]]*==' constraints.txt; echo "torch==${TORCH_VERSION}"; } > /tmp/constraints.txt \
    && pip install --no-deps -c /tmp/constraints.txt "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Only what the package needs: never the working tree (ops/secrets/, .venv, data).
COPY pyproject.toml README.md ./
COPY farm ./farm
COPY migrations ./migrations
# A regular (non-editable) install: the Alembic scripts ship inside the package (farm.ledger.migrations).
RUN pip install -c /tmp/constraints.txt ".[engine,ops]" \
    && pip check \
    && rm /tmp/constraints.txt

USER farm
EXPOSE 8400 5555 9400
CMD ["farm", "--help"]
