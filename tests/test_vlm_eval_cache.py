"""The contrastive adapters cache the frozen-prefix outputs of evaluated samples: results must be
exactly those of a fresh computation, also after fine-tuning and after `load`."""

from __future__ import annotations

import pytest

from rls3.vlm import build_vlm
from rls3.vlm.synthetic import make_samples

ADAPTERS = {"lite": {"image_size": 64}, "clip-tiny": {}}


def _vlm(name: str):
    return build_vlm(name, batch_size=4, progress=False, seed=0, **ADAPTERS[name])


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_cached_evaluation_equals_fresh(name: str, tmp_path) -> None:
    samples = make_samples(10, seed=5, size=64)
    batch = make_samples(8, seed=6, size=64)
    vlm, ref = _vlm(name), _vlm(name)
    ref.eval_cache_samples = 0                       # never caches
    assert vlm.evaluate(samples).to_dict() == ref.evaluate(samples).to_dict()
    # 10 samples in groups of 4: three chunks held
    assert len(vlm.caches.evaluated) == 3 and not len(ref.caches.evaluated)
    assert vlm.evaluate(samples).to_dict() == ref.evaluate(samples).to_dict()   # warm cache
    # fine-tuning changes only the suffix: cached prefixes stay valid
    assert vlm.finetune(batch, 1) == ref.finetune(batch, 1)
    assert vlm.evaluate(samples).to_dict() == ref.evaluate(samples).to_dict()
    # feedback never fills the cache
    n = len(vlm.caches.evaluated)
    vlm.feedback(batch)
    assert len(vlm.caches.evaluated) == n
    # load() replaces every weight, so the cache is dropped
    other = _vlm(name)
    other.finetune(make_samples(8, seed=7, size=64), 2)
    other.save(tmp_path / "w")
    vlm.load(tmp_path / "w")
    assert not len(vlm.caches.evaluated)
    assert vlm.evaluate(samples).to_dict() == other.evaluate(samples).to_dict()


def test_cache_is_bounded() -> None:
    vlm = _vlm("lite")
    vlm.eval_cache_samples = 5
    vlm.evaluate(make_samples(10, seed=5, size=64))
    assert vlm.caches.evaluated.samples <= 5
    vlm.clear_eval_cache()
    assert not len(vlm.caches.evaluated)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_finetune_reuses_the_feedback_prefixes(name: str) -> None:
    """The loop fine-tunes on a subset of the samples it just fed back: their frozen image
    prefixes are reused (only flipped copies are computed), with the same losses."""
    episode = make_samples(10, seed=8, size=64)
    kept = episode[1::2]
    vlm, ref = _vlm(name), _vlm(name)
    rows: list[int] = []
    prefix = vlm.image_prefix
    vlm.image_prefix = lambda x: (rows.append(x.shape[0]), prefix(x))[1]
    vlm.feedback(episode)
    assert len(vlm.caches.fed_back) == len(episode) and sum(rows) == len(episode)
    rows.clear()
    got, want = vlm.finetune(kept, 2), ref.finetune(kept, 2)
    assert sum(rows) == (len(kept) if vlm.mirror_augment else 0)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert not len(vlm.caches.fed_back)                    # cleared once the batch is formed
    vlm.feedback_cache_samples = 3                   # bounded
    vlm.feedback(episode)
    assert len(vlm.caches.fed_back) == 3
    vlm.clear_eval_cache()
    assert not len(vlm.caches.fed_back)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_replayed_samples_reuse_their_fine_tuning_prefixes(name: str) -> None:
    """A sample fine-tuned before and replayed later costs only the trainable part: its frozen
    image prefix (and its flipped copy's) is cached by sample, bounded, and the losses equal an
    adapter that recomputes everything."""
    first, new = make_samples(6, seed=9, size=64), make_samples(4, seed=10, size=64)
    vlm, ref = _vlm(name), _vlm(name)
    ref.train_cache_samples = 0
    rows: list[int] = []
    prefix = vlm.image_prefix
    vlm.image_prefix = lambda x: (rows.append(x.shape[0]), prefix(x))[1]
    copies = 2 if vlm.mirror_augment else 1
    assert vlm.finetune(first, 1) == ref.finetune(first, 1)
    assert sum(rows) == copies * len(first) and len(vlm.caches.trained) == len(first)
    rows.clear()
    groups = [0] * len(new) + [1] * len(first)
    got, want = vlm.finetune(new + first, 2, groups=groups), ref.finetune(new + first, 2)
    assert sum(rows) == copies * len(new)            # only the new samples' prefixes computed
    assert got == want
    # per-step group losses: one entry per optimizer step, for the groups in its mini-batch
    assert len(vlm.last_group_losses) == len(got)
    assert all(set(g) <= {0, 1} and g for g in vlm.last_group_losses)
    with pytest.raises(ValueError, match="labels"):
        vlm.finetune(new, 1, groups=[0])
    vlm.train_cache_samples = 5                      # bounded, least recently used dropped
    vlm.finetune(make_samples(4, seed=11, size=64), 1)
    assert len(vlm.caches.trained) == 5
    vlm.clear_eval_cache()
    assert not len(vlm.caches.trained)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_consecutive_calls_on_one_batch_reuse_its_prefixes(name: str) -> None:
    """The loop fine-tunes one batch in several calls (validating in between): later calls
    reuse the batch's frozen prefixes and take the steps one call would have taken."""
    batch = make_samples(8, seed=6, size=64)
    one, split = _vlm(name), _vlm(name)
    want = one.finetune(batch, 2)
    rows: list[int] = []
    prefix = split.image_prefix
    split.image_prefix = lambda x: (rows.append(x.shape[0]), prefix(x))[1]
    got = split.finetune(batch, 1)
    computed = sum(rows)
    assert got + split.finetune(batch, 1) == want
    assert computed > 0 and sum(rows) == computed    # the second call computed no prefix
    assert split.caches.batch is not None and split.caches.batch.serves(
        batch, len(batch) * (2 if split.mirror_augment else 1))
