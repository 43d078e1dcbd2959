"""The `clip` adapter on tiny random CLIP / SigLIP models built offline, saved to folders and
loaded back through the same loading function as hub checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rls3.vlm import VLM, build_vlm
from rls3.vlm.clip import ClipVLM, load_dual_encoder
from rls3.vlm.synthetic import make_samples


@pytest.fixture(scope="module")
def samples():
    return make_samples(8, seed=4, size=48)


def tiny(kind: str = "clip", **kw):
    opts = {"batch_size": 4, "progress": False, "lr": 1e-3, "seed": 0}
    opts.update(kw)
    return build_vlm(f"{kind}-tiny", **opts)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_dual_encoder_evaluate_feedback(kind, samples):
    vlm = tiny(kind)
    assert isinstance(vlm, VLM)
    assert vlm.model_type == kind
    m = vlm.evaluate(samples)
    assert m.n == 8 and 0.0 <= m.score <= 1.0 and m.loss > 0
    fb = vlm.feedback(samples)
    assert fb.j2 == pytest.approx(float(np.mean(fb.per_sample)) ** 2, rel=1e-12)
    assert vlm.encode_images([s.image for s in samples[:3]]).shape == (3, 32)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_finetune_lowers_loss(kind, samples):
    vlm = tiny(kind)
    loss0 = vlm.evaluate(samples).loss
    steps = vlm.finetune(samples, 4)
    assert len(steps) == 4 * 2
    assert vlm.evaluate(samples).loss < loss0
    assert all(p.requires_grad for p in vlm.module.parameters())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_save_and_load_through_the_hub_path(kind, samples, tmp_path):
    vlm = tiny(kind)
    vlm.finetune(samples, 1)
    vlm.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "rls3_vlm.json").read_text())
    assert meta["kind"] == "clip" and meta["model_type"] == kind
    images = [s.image for s in samples]
    texts = [s.description.caption for s in samples]
    e_img, e_txt, m = vlm.encode_images(images), vlm.encode_texts(texts), vlm.evaluate(samples)

    again = build_vlm("clip", weights=str(tmp_path / "ckpt"), batch_size=4, progress=False)
    assert again.model_type == kind
    assert torch.equal(again.encode_images(images), e_img)
    assert torch.equal(again.encode_texts(texts), e_txt)
    assert again.evaluate(samples) == m
    assert again.optimizer.state_dict()["state"].keys() == vlm.optimizer.state_dict()[
        "state"].keys()

    other = tiny(kind, seed=7)
    other.load(tmp_path / "ckpt")
    assert torch.equal(other.encode_images(images), e_img)


def test_finetune_is_deterministic(samples):
    assert tiny(seed=3).finetune(samples, 2) == tiny(seed=3).finetune(samples, 2)


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
