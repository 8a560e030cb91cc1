#!/usr/bin/env bash
# The OS tools the ops tests run (tests/unit/test_ops_*.py), from Debian bookworm's packages:
#   promtool        (package prometheus)               `promtool check config|rules`, `promtool test rules`
#   amtool          (package prometheus-alertmanager)  `amtool check-config ops/alertmanager.yml`
#   systemd-analyze (package systemd)                  `systemd-analyze verify ops/systemd/*.service`
# Idempotent: installs only what is missing (nothing, and no apt call, when all three are there).
# Needs root (or sudo). Services the packages ship are not started: while installing, a
# policy-rc.d that refuses every start is put in place when the host has none (Docker images
# usually have one already), then removed.
set -euo pipefail

declare -A PACKAGE_OF=([promtool]=prometheus [amtool]=prometheus-alertmanager [systemd-analyze]=systemd)
missing=()
for tool in promtool amtool systemd-analyze; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$tool]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "ops-tools: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ops-tools: no apt-get here; install these packages' tools by hand: ${missing[*]}" >&2
  exit 1
fi

POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  # shellcheck disable=SC2064
  trap "${SUDO[*]} rm -f '$POLICY'" EXIT
  printf '#!/bin/sh\n# scripts/ops-tools.sh: no service starts while installing\nexit 101\n' \
    | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 755 "$POLICY"
fi

export DEBIAN_FRONTEND=noninteractive
# Package lists first when they are missing or older than a day (a fresh container has none).
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 -print -quit 2>/dev/null)" ]; then
  "${SUDO[@]}" apt-get update -qq
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
for tool in promtool amtool systemd-analyze; do
  command -v "$tool" >/dev/null 2>&1 || { echo "ops-tools: $tool still missing" >&2; exit 1; }
done
