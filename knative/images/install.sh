#!/bin/sh
# Installs one function into its image in two steps, run as root by the image's Containerfile:
#   sh install.sh deps EXTRA          the packages of pyproject.toml's dependencies and EXTRA
#                                     (`train`, `infer`; `base`: none) into /opt/venv, from
#                                     /tmp/deps
#   sh install.sh app EXTRA [MODULE...]   the project itself from /tmp/src, without dependencies;
#                                     each MODULE must NOT be importable afterwards
# The dependency step changes only when pyproject.toml does, so a build cache keeps it while the
# code changes (`make images` keeps it as an image of its own).
#
# Python 3.11 comes from the base (Debian bookworm's python3; installed from the base's own apt
# sources when missing). With WHEEL_CACHE set (a directory the build mounts), wheels are taken
# from there and only missing ones are fetched into it; with CA_BUNDLE set, pip trusts that
# bundle. Neither ends up in the image.
set -eu
step=$1
extra=$2
shift 2
pip=/opt/venv/bin/pip
if [ -n "${CA_BUNDLE:-}" ]; then export PIP_CERT="$CA_BUNDLE"; fi
export PIP_NO_CACHE_DIR=1

# pip install ARGS..., offline from WHEEL_CACHE when set (fetching what is missing into it first).
install() {
  if [ -z "${WHEEL_CACHE:-}" ]; then
    "$pip" install -q "$@"
  elif ! "$pip" install -q --no-index --find-links "$WHEEL_CACHE" "$@" 2>/dev/null; then
    echo "install.sh: fetching the wheels $extra needs into the cache"
    "$pip" wheel -q --wheel-dir "$WHEEL_CACHE" "setuptools>=77" "$@"
    rm -f "$WHEEL_CACHE"/kafka_ml_knative-*.whl
    "$pip" install -q --no-index --find-links "$WHEEL_CACHE" "$@"
  fi
}

case $step in
deps)
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
    apt-get clean
    rm -rf /var/lib/apt/lists/*
  fi
  python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11, not " + sys.version'
  [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
  /opt/venv/bin/python - "$extra" >/tmp/deps/requirements.txt <<'PY'
import sys, tomllib
project, extra = tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"], sys.argv[1]
extras = [] if extra == "base" else project["optional-dependencies"][extra]
print("\n".join(project["dependencies"] + extras))
PY
  install -r /tmp/deps/requirements.txt
  rm -rf /tmp/deps
  ;;
app)
  install --no-deps /tmp/src
  rm -rf /tmp/src /opt/venv/bin/kml  # no CLI in a function image
  "$pip" check  # every dependency the project names is installed, at its pinned version
  "$pip" list --format=freeze | sed 's/^/installed: /'
  for module in "$@"; do
    if /opt/venv/bin/python -c "import $module" 2>/dev/null; then
      echo "install.sh: this image must not carry $module" >&2
      exit 1
    fi
  done
  id -u kml >/dev/null 2>&1 || useradd --create-home --uid 10001 kml
  ;;
*)
  echo "install.sh: the step is deps or app, not $step" >&2
  exit 2
  ;;
esac
