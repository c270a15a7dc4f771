#!/bin/sh
# Installs torch for an image build from TORCH_SOURCE (a build argument), so that a site without
# PyTorch's own index can still build:
#   an index URL (http://, https://, file://)  pip install torch==$TORCH_VERSION --index-url URL
#   a wheel file in the build context           "$py" -m pip install that wheel (its dependencies from PIP_INDEX_URL)
#   a folder in the build context (wheelhouse)  pip install torch==$TORCH_VERSION from it alone, no index
#   "base"                                      keep the torch the base image already has (Jetson)
# Context paths are relative to the build context, e.g. wheels/torch-2.13.0+cpu-cp311-...whl or wheels.
set -eu
source=${TORCH_SOURCE:?TORCH_SOURCE is empty}
ctx=${BUILD_CONTEXT:-/src}   # where the Dockerfiles copy wheels/
version=${TORCH_VERSION:?TORCH_VERSION is empty}
py=$(command -v python || command -v python3)
case "$source" in
  base)
    "$py" -c "import torch" 2>/dev/null || { echo "TORCH_SOURCE=base, but the base image has no torch" >&2; exit 1; } ;;
  *://*)
    "$py" -m pip install "torch==$version" --index-url "$source" ;;
  *.whl)
    [ -f "$ctx/$source" ] || { echo "TORCH_SOURCE=$source: no such wheel in the build context (put it under wheels/)" >&2; exit 1; }
    "$py" -m pip install "$ctx/$source" ;;
  *)
    [ -d "$ctx/$source" ] || { echo "TORCH_SOURCE=$source: not an index URL, a .whl or a folder in the build context" >&2; exit 1; }
    "$py" -m pip install --no-index --find-links "$ctx/$source" "torch==$version" ;;
esac
"$py" -c "import torch; print('torch', torch.__version__, 'from', '$source')"
