"""The VLM registry and its helpers: names and unknown names or options are named, dtype and
weight source resolve, and building the default adapter loads no torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rls3.vlm import available_vlms, build_vlm, get_vlm_spec
from rls3.vlm.common import resolve_dtype, resolve_source


def test_registry_names_and_unknown_name():
    names = available_vlms()
    for n in ("lite", "clip", "paligemma", "clip-tiny", "paligemma-tiny"):
        assert n in names
    with pytest.raises(ValueError, match="unknown VLM 'nope'.*lite.*clip.*paligemma"):
        build_vlm("nope")
    assert get_vlm_spec("clip").weights == "openai/clip-vit-base-patch32"


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option.*'colour'.*allowed"):
        build_vlm("lite", colour="red")


def test_dtype_and_source_resolution(tmp_path):
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", torch.device("cpu"))
    assert resolve_source("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert resolve_source(tmp_path) == str(tmp_path.resolve())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source("./not/here")


@pytest.mark.slow
def test_default_path_imports_no_torchvision():
    code = ("import rls3.vlm, rls3.vlm.lite, sys\n"
            "v = rls3.vlm.build_vlm('lite', image_size=64, progress=False)\n"
            "bad = [m for m in ('torchvision', 'timm', 'open_clip') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
