#!/usr/bin/env bash
# The OS tool the deployment tests run (tests/unit/test_compose_config.py), from Debian's packages:
#   docker-compose  (package docker-compose, Compose v1)  `docker-compose config -q` validates
#                   docker-compose.yml (interpolation, merge keys, secrets, profiles) without a
#                   Docker engine; `docker compose config` (v2) needs the Docker CLI plugin.
# Idempotent: nothing is installed (and apt is not called) when docker-compose is already there.
# Needs root (or sudo). The package pulls no Docker engine (--no-install-recommends).
set -euo pipefail

if command -v docker-compose >/dev/null 2>&1; then
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "deploy-tools: need root (or sudo) to install docker-compose" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "deploy-tools: no apt-get here; install docker-compose (Compose v1, 1.29) by hand" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Package lists first when they are missing or older than a day (a fresh container has none).
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 -print -quit 2>/dev/null)" ]; then
  "${SUDO[@]}" apt-get update -qq
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends docker-compose
command -v docker-compose >/dev/null 2>&1 || { echo "deploy-tools: docker-compose still missing" >&2; exit 1; }
