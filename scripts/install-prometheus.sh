#!/usr/bin/env bash
# Prints the path of a usable `prometheus` binary (last line of stdout).
#
# Prefers a `prometheus` already on PATH; else Debian bookworm's `prometheus` package (2.42),
# cached under <repo>/.cache/prometheus. It is unpacked with `dpkg -x` rather than installed
# with `apt-get install`: that needs no root, changes nothing on the system, and cannot leave
# the package's own service running (its postinst would start one, and policy-rc.d tricks do
# not cover every init system). Tests run the binary themselves with their own config.
set -euo pipefail

if onpath=$(command -v prometheus 2>/dev/null) && "$onpath" --version >/dev/null 2>&1; then
  echo "$onpath"
  exit 0
fi
exec "$(dirname "${BASH_SOURCE[0]}")/fetch-debian-package.sh" bookworm prometheus usr/bin/prometheus
