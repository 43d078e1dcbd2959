"""The `paligemma` adapter on a tiny random PaliGemma (SigLIP vision + Gemma text) whose BPE
tokenizer is trained offline with the `tokenizers` library, saved to a folder and loaded back
through the normal loading path (what every adapter promises, round trip included, is in
test_vlm_contract)."""

from __future__ import annotations

import pytest
import torch

from rls3.vlm import build_vlm
from rls3.vlm.paligemma import LM_ATTENTION, PaliGemmaVLM, load_paligemma
from rls3.vlm.synthetic import make_samples
from rls3.vlm.tiny import CORPUS, train_tokenizer


@pytest.fixture(scope="module")
def samples():
    return make_samples(6, seed=5, size=48)


def tiny(**kw):
    opts = {"batch_size": 3, "progress": False, "lr": 3e-3, "seed": 0}
    opts.update(kw)
    return build_vlm("paligemma-tiny", **opts)


def test_offline_tokenizer_covers_captions():
    tok = train_tokenizer(CORPUS, extra_specials=("<image>",))
    for special in ("<image>", "<bos>", "<eos>", "<pad>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
    text = "The yellow triangle is to the left of the purple triangle."
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_training_inputs_supervise_only_the_answer(samples):
    vlm = tiny()
    batch = vlm.training_inputs(samples[:3])
    tok = vlm.tokenizer
    for i, s in enumerate(samples[:3]):
        labels = batch["labels"][i]
        answer_ids = labels[labels != -100]
        assert answer_ids[-1] == tok.eos_token_id
        assert tok.decode(answer_ids, skip_special_tokens=True) == s.description.caption
        prompt = tok.decode(batch["input_ids"][i][batch["token_type_ids"][i] == 0],
                            skip_special_tokens=False)
        assert s.description.question in prompt and "<image>" in prompt
    assert int((batch["input_ids"] == vlm.processor.image_token_id).sum(1)[0]) == \
        vlm.processor.image_seq_length


def test_finetune_updates_exactly_the_lm_attention(samples):
    vlm = tiny()
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    losses = vlm.finetune(samples, 3)
    assert len(losses) == 3
    attn = {n for n in before if LM_ATTENTION.search(n)}
    assert attn == set(vlm.trainable_names)
    assert len(attn) == 2 * 4                       # 2 layers x q/k/v/o
    assert all(".language_model." in n and ".self_attn." in n for n in attn)
    for n, p in vlm.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in attn), n
        assert p.requires_grad == (n in attn), n


def test_finetune_lowers_the_loss_on_a_fixed_batch(samples):
    vlm = tiny()
    batch = samples[:3]
    loss0 = vlm.evaluate(batch).loss
    losses = vlm.finetune(batch, 8)
    assert losses[-1] < losses[0]
    assert vlm.evaluate(batch).loss < loss0


def test_feedback_and_metrics_from_rubric_scores(samples, monkeypatch):
    vlm = tiny()
    monkeypatch.setattr(PaliGemmaVLM, "_generate",
                        lambda self, chunk: [s.description.caption if i % 2 == 0 else "no idea"
                                             for i, s in enumerate(chunk)])
    fb = vlm.feedback(samples)
    assert fb.per_sample == (5.0, 1.0, 5.0, 5.0, 1.0, 5.0)   # batches of 3: indices restart
    mean = sum(fb.per_sample) / 6
    assert fb.j2 == pytest.approx((6 - mean) ** 2)
    m = vlm.evaluate(samples)
    assert m.score == pytest.approx(mean) and m.n == 6 and m.loss > 0
    assert set(m.per_term) == {t for s in samples for t in s.description.terms}
    monkeypatch.undo()
    answers = vlm.generate(samples[:2])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_paligemma(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_vlm("paligemma", weights=str(tmp_path / "nope"))
    clip = build_vlm("clip-tiny", progress=False)
    clip.save(tmp_path / "clip")
    with pytest.raises(ValueError, match="is a 'clip' model; the paligemma adapter needs"):
        load_paligemma(tmp_path / "clip")
    with pytest.raises(ValueError, match="prompt_template"):
        tiny(prompt_template="no placeholder")
