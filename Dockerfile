# The CPU image (farm:cpu): migrate, the HTTP API, Flower and CPU workers (the built-in tiny model).
# GPU workers run the GPU image instead (Dockerfile.gpu: CUDA runtime, the same Python, CUDA torch).
#   docker build -t farm:cpu .
# Every package at the version constraints.txt pins (the lock `scripts/dev lock` writes); torch is
# its CPU build (2.13.0+cpu) from PyTorch's CPU index. Model weights are never baked in: mount them
# read-only at FARM_MODEL_DIR (/models). No secret is baked in either: compose mounts them at run
# time (/run/secrets/, named by the FARM_*_FILE settings; ops/README.md).

FROM python:3.11.14-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so volumes and secret files can be given to it on the host.
RUN groupadd --gid 10001 farm \
    && useradd --create-home --uid 10001 --gid 10001 farm \
    && mkdir -p /app /data/outputs /data/flower /models \
    && chown -R farm:farm /app /data

WORKDIR /app

# torch first, from its CPU index, WITHOUT dependencies (that index mirrors few versions of them):
# the lock's pin torch==2.13.0 admits the 2.13.0+cpu build. The next install resolves torch's
# dependencies and everything else from PyPI under the same lock.
COPY constraints.txt ./
RUN pip install --no-deps -c constraints.txt torch --index-url "${TORCH_INDEX_URL}"

# Only what the package needs: never the working tree (ops/secrets/, .venv, data).
COPY pyproject.toml README.md ./
COPY farm ./farm
COPY migrations ./migrations
# A regular (non-editable) install: the Alembic scripts ship inside the package (farm.ledger.migrations).
RUN pip install -c constraints.txt ".[engine,ops]" \
    && pip check

USER 10001:10001
EXPOSE 8400 5555 9400
CMD ["farm", "--help"]
