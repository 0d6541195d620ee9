#!/usr/bin/env bash
# Usage: fetch-debian-package.sh SUITE PACKAGE BINARY
# Unpacks Debian SUITE's PACKAGE under <repo>/.cache/PACKAGE and prints the path of BINARY
# (relative to the package root, e.g. usr/bin/consul) as the last line of stdout.
#
# apt-get runs with private sources, lists and cache dirs, so the system's apt configuration
# and package state are neither needed nor changed, and no root is required. The package is
# unpacked with `dpkg -x`, not installed: no maintainer scripts, no service left running.
# Idempotent: a cached, runnable BINARY is printed at once. Progress goes to stderr; on failure
# it says what failed and how to fix it, and exits non-zero.
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 SUITE PACKAGE BINARY" >&2; exit 2; }
suite=$1 package=$2 binary=$3
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache"
root="$cache/$package"
bin="$root/$binary"

fail() {
  echo "fetch-debian-package: $package: $1" >&2
  echo "fetch-debian-package: fix: put '$(basename "$binary")' on PATH yourself, or make" \
    "deb.debian.org reachable and rerun." >&2
  exit 1
}

cached() { [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; }
if cached; then
  echo "$bin"
  exit 0
fi

command -v apt-get >/dev/null || fail "apt-get is missing, so Debian's package cannot be fetched."
command -v dpkg >/dev/null || fail "dpkg is missing, so Debian's package cannot be unpacked."
mkdir -p "$cache"
# Concurrent runs (two test sessions) wait for one fetch instead of racing on the same dirs.
if command -v flock >/dev/null; then
  exec 9>"$cache/$package.lock"
  flock -w 300 9 || fail "timed out waiting for another fetch ($cache/$package.lock)."
  if cached; then
    echo "$bin"
    exit 0
  fi
fi

apt_dir="$cache/apt-$suite-$package"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/debs"
echo "deb http://deb.debian.org/debian $suite main" >"$apt_dir/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir"
  -o "Dir::Cache::archives=$apt_dir/archives"
)
# As root apt hands downloads to the _apt user, which may not reach a repo checkout.
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o "APT::Sandbox::User=root")

echo "fetch-debian-package: fetching $suite's $package into $root" >&2
# --error-on=any: without it a failed index download still exits 0.
apt-get "${apt_opts[@]}" -q --error-on=any update >&2 ||
  fail "'apt-get update' for the private $suite source failed (network or mirror problem)."
(cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" -q download "$package/$suite" >&2) ||
  fail "'apt-get download $package/$suite' failed (package missing from the mirror?)."

deb=$(find "$apt_dir/debs" -name "${package}_*.deb" | head -n 1)
[ -n "$deb" ] || fail "the download left no ${package}_*.deb in $apt_dir/debs."
# Unpack beside the target, then rename: an interrupted run never leaves a half tree behind.
tmp=$(mktemp -d "$cache/$package.XXXXXX")
dpkg -x "$deb" "$tmp" || { rm -rf "$tmp"; fail "'dpkg -x $deb' failed."; }
rm -rf "$root"
mv "$tmp" "$root"
rm -rf "$apt_dir"  # only the unpacked tree is kept; the lists and .deb are tens of MB
cached || fail "$bin was unpacked but does not run ('$(basename "$binary") --version' failed)."
echo "$bin"
