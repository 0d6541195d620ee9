#!/usr/bin/env bash
# Prints the path of a usable `consul` binary (last line of stdout).
#
# Prefers a `consul` already on PATH; else Debian bullseye's `consul` package (1.8.7, a real
# agent with Connect), cached under <repo>/.cache/consul (see fetch-debian-package.sh).
set -euo pipefail

if onpath=$(command -v consul 2>/dev/null) && "$onpath" --version >/dev/null 2>&1; then
  echo "$onpath"
  exit 0
fi
exec "$(dirname "${BASH_SOURCE[0]}")/fetch-debian-package.sh" bullseye consul usr/bin/consul
