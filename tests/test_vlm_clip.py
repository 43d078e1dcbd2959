"""The `clip` adapter on tiny random CLIP / SigLIP models built offline, saved to folders and
loaded back through the same loading function as hub checkpoints (what every adapter promises,
round trip included, is in test_vlm_contract)."""

from __future__ import annotations

import json

import pytest
import torch

from rls3.vlm import build_vlm
from rls3.vlm.clip import ClipVLM, load_dual_encoder
from rls3.vlm.common import META_FILE
from rls3.vlm.synthetic import make_samples


@pytest.fixture(scope="module")
def samples():
    return make_samples(8, seed=4, size=48)


def tiny(kind: str = "clip", **kw):
    opts = {"batch_size": 4, "progress": False, "lr": 1e-3, "seed": 0}
    opts.update(kw)
    return build_vlm(f"{kind}-tiny", **opts)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_dual_encoder_kind_and_embeddings(kind, samples):
    vlm = tiny(kind)
    assert vlm.model_type == kind
    assert vlm.encode_images([s.image for s in samples[:3]]).shape == (3, 32)
    assert vlm.encode_texts(["a cup", "a mug"]).shape == (2, 32)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_finetune_lowers_loss(kind, samples):
    vlm = tiny(kind)
    loss0 = vlm.evaluate(samples).loss
    steps = vlm.finetune(samples, 4)
    assert len(steps) == 4 * 2
    assert vlm.evaluate(samples).loss < loss0
    assert all(p.requires_grad for p in vlm.module.parameters())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_checkpoint_records_the_model_type(kind, samples, tmp_path):
    """The round trip itself is in test_vlm_contract; here the folder says CLIP or SigLIP and a
    loaded model embeds as the saved one did."""
    vlm = tiny(kind)
    vlm.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / META_FILE).read_text())
    assert meta["kind"] == "clip" and meta["model_type"] == kind
    again = build_vlm("clip", weights=str(tmp_path / "ckpt"), batch_size=4, progress=False)
    assert again.model_type == kind
    images = [s.image for s in samples]
    assert torch.equal(again.encode_images(images), vlm.encode_images(images))


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dual_encoder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_vlm("clip", weights=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_dual_encoder(tmp_path / "empty")
    # a checkpoint of another kind: the tiny PaliGemma
    pg = build_vlm("paligemma-tiny", progress=False)
    pg.save(tmp_path / "pg")
    with pytest.raises(ValueError, match="is a 'paligemma' model; the clip adapter needs"):
        load_dual_encoder(tmp_path / "pg")
    with pytest.raises(ValueError, match="needs `weights`"):
        ClipVLM("clip")
