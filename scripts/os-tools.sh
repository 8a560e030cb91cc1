#!/usr/bin/env bash
# The OS tools farm's tests run, from Debian bookworm's packages (one table, one apt call):
#   promtool        (prometheus)               `promtool check config|rules`, `promtool test rules` (ops tests)
#   amtool          (prometheus-alertmanager)  `amtool check-config ops/alertmanager.yml`
#   systemd-analyze (systemd)                  `systemd-analyze verify ops/systemd/*.service`
#   docker-compose  (docker-compose, Compose v1)  `docker-compose config -q` validates docker-compose.yml
#                   offline, no Docker engine (the package pulls none with --no-install-recommends)
#   chromium        (chromium)                 the review room's browser tests (Playwright drives this browser)
#   soffice         (libreoffice-calc-nogui)   the spreadsheet round trip of `farm results --format csv|xlsx`
# Usage: scripts/os-tools.sh [TOOL...]   (default: every tool above)
# Idempotent: installs only what is missing (nothing, and no apt call, when all are there).
# Needs root (or sudo). Services the packages ship are not started: while installing, a
# policy-rc.d that refuses every start is put in place when the host has none (Docker images
# usually have one already), then removed.
set -euo pipefail

declare -A PACKAGE_OF=(
  [promtool]=prometheus
  [amtool]=prometheus-alertmanager
  [systemd-analyze]=systemd
  [docker-compose]=docker-compose
  [chromium]=chromium
  [soffice]=libreoffice-calc-nogui
)
ORDER=(promtool amtool systemd-analyze docker-compose chromium soffice)
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=("${ORDER[@]}")

missing=()
for tool in "${tools[@]}"; do
  package=${PACKAGE_OF[$tool]:-}
  if [ -z "$package" ]; then
    echo "os-tools: unknown tool $tool (known: ${ORDER[*]})" >&2
    exit 2
  fi
  command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "os-tools: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "os-tools: no apt-get here; install these packages' tools by hand: ${missing[*]}" >&2
  exit 1
fi

POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  # shellcheck disable=SC2064
  trap "${SUDO[*]} rm -f '$POLICY'" EXIT
  printf '#!/bin/sh\n# scripts/os-tools.sh: no service starts while installing\nexit 101\n' \
    | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 755 "$POLICY"
fi

export DEBIAN_FRONTEND=noninteractive
# Package lists first when they are missing or older than a day (a fresh container has none).
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 -print -quit 2>/dev/null)" ]; then
  "${SUDO[@]}" apt-get update -qq
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "os-tools: $tool still missing" >&2; exit 1; }
done
