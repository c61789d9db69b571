#!/bin/sh
# Installs one function into its image; run as root by the image's Containerfile, with the
# project's sources in /tmp/src (only the packages that function runs).
#   sh install.sh EXTRA [MODULE...]
# EXTRA is the pyproject extra to install (`train`, `infer`); each MODULE must NOT be importable
# afterwards (the build fails if it is).
#
# Python 3.11 comes from the base (Debian bookworm's python3; installed from the base's own apt
# sources when missing), in the virtual environment /opt/venv. With WHEEL_CACHE set (a directory
# the build mounts), wheels are taken from there and only missing ones are fetched into it; with
# CA_BUNDLE set, pip trusts that bundle. Neither ends up in the image.
set -eu
extra=$1
shift
src=/tmp/src

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
  apt-get clean
  rm -rf /var/lib/apt/lists/*
fi
python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11, not " + sys.version'
python3 -m venv /opt/venv
pip=/opt/venv/bin/pip

if [ -n "${CA_BUNDLE:-}" ]; then export PIP_CERT="$CA_BUNDLE"; fi
export PIP_NO_CACHE_DIR=1
if [ -n "${WHEEL_CACHE:-}" ]; then
  offline() { "$pip" install -q --no-index --find-links "$WHEEL_CACHE" "$src[$extra]"; }
  if ! offline 2>/dev/null; then
    echo "install.sh: fetching the wheels $extra needs into the cache"
    "$pip" wheel -q --wheel-dir "$WHEEL_CACHE" "setuptools>=77" "$src[$extra]"
    rm -f "$WHEEL_CACHE"/kafka_ml_knative-*.whl
    offline
  fi
else
  "$pip" install -q "$src[$extra]"
fi
rm -rf "$src" /opt/venv/bin/kml  # no CLI in a function image
"$pip" list --format=freeze | sed 's/^/installed: /'

for module in "$@"; do
  if /opt/venv/bin/python -c "import $module" 2>/dev/null; then
    echo "install.sh: this image must not carry $module" >&2
    exit 1
  fi
done
id -u kml >/dev/null 2>&1 || useradd --create-home --uid 10001 kml
