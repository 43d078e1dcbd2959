"""Tiny randomly initialised CLIP / SigLIP / PaliGemma models with tokenizers trained on the spot,
built entirely offline (no hub access, no downloads). Tests and the `*-tiny` registry entries use
them; `save` writes them as ordinary transformers folders that load back through the same
function as a hub checkpoint.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable
from typing import Any

from rls3.vlm.common import seeded

#: Words the tiny tokenizers are trained on: the project's caption/question vocabulary (any
#: other ASCII text still encodes, character by character).
CORPUS: tuple[str, ...] = (
    "the cup is to the left of the bowl",
    "the bowl is to the right of and behind the plate",
    "the mug is above and in front of the bottle",
    "the vase is below and to the left of the lamp",
    "the apple is in front of the toaster",
    "the pot is behind and to the right of the blender",
    "What is the position of the cup relative to the bowl?",
    "What is the position of the plate relative to the mug?",
    "red green blue yellow purple orange square circle triangle",
    "wine bottle yogurt coffee mug plastic cup bread plate large pan desk lamp",
)
#: Special tokens, in id order: pad=0, eos=1, bos=2, unk=3.
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def train_tokenizer(corpus: Iterable[str] = CORPUS, *, vocab_size: int = 256,
                    extra_specials: tuple[str, ...] = (), single: str = "$A:0",
                    pair: str = "$A:0 $B:1", model_input_names: list[str] | None = None,
                    padding_side: str = "right", model_max_length: int = 64) -> Any:
    """A byte-pair tokenizer trained with the `tokenizers` library on `corpus` (every printable
    ASCII character is in the base alphabet), wrapped as a transformers fast tokenizer.
    `single` / `pair` are `TemplateProcessing` templates (e.g. "<bos> $A <eos>")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIALS) + list(extra_specials)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    alphabet = sorted(set(string.printable) - set(" \t\r\x0b\x0c")) + ["\u2581"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    ids = {t: tok.token_to_id(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, ids[t]) for t in specials
                                                  if t in single or t in pair])
    kwargs: dict[str, Any] = {}
    if model_input_names is not None:
        kwargs["model_input_names"] = model_input_names
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>",
                                   padding_side=padding_side, model_max_length=model_max_length,
                                   **kwargs)


#: Random dual encoders `tiny_clip` builds: tiny ones for tests, and the paper's sizes (the
#: transformers config defaults are CLIP ViT-B/32 and SigLIP base patch16-224) for GPU benchmarks
DUAL_ENCODER_KINDS = ("clip", "siglip", "clip-b32", "siglip-base")


def tiny_clip(kind: str = "clip", *, seed: int = 0, image_size: int = 32) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image processor) of a random `CLIPModel` or `SiglipModel`: tiny for
    "clip" / "siglip"; for "clip-b32" / "siglip-base" the paper's sizes (224 px, the hub models'
    layer sizes and vocabulary sizes; the tokenizer is still the small local one)."""
    from transformers import (CLIPConfig, CLIPModel, SiglipConfig, SiglipModel)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if kind not in DUAL_ENCODER_KINDS:
        raise ValueError(f"unknown tiny dual-encoder kind {kind!r}; allowed: "
                         f"{', '.join(map(repr, DUAL_ENCODER_KINDS))}")
    paper = kind in ("clip-b32", "siglip-base")
    if paper:
        vision: dict[str, Any] = {}
        text: dict[str, Any] = {}
        image_size = 224
    else:
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "image_size": image_size, "patch_size": 8}
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "max_position_embeddings": 64}
    if kind.startswith("clip"):
        tok = train_tokenizer(single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
                              model_max_length=77 if paper else 64)
        text.update(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id)
        if not paper:
            text["vocab_size"] = len(tok)
        extra: dict[str, Any] = {} if paper else {"projection_dim": 32}
        config: CLIPConfig | SiglipConfig
        proc: CLIPImageProcessorPil | SiglipImageProcessorPil
        config = CLIPConfig(text_config=text, vision_config=vision, **extra)
        proc = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                     crop_size={"height": image_size, "width": image_size})
        cls: Callable[[Any], CLIPModel | SiglipModel] = CLIPModel
    else:
        length = 64 if paper else 16
        tok = train_tokenizer(single="$A <eos>", pair="$A <eos> $B <eos>",
                              model_input_names=["input_ids"], model_max_length=length)
        text.update(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, max_position_embeddings=length)
        if not paper:
            text["vocab_size"] = len(tok)
        config = SiglipConfig(text_config=text, vision_config=vision)
        proc = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        cls = SiglipModel
    with seeded(seed):
        model = cls(config)
    return model.eval(), tok, proc


def tiny_paligemma(*, seed: int = 0, image_size: int = 32, patch_size: int = 16,
                   size: str = "tiny") -> tuple[Any, Any]:
    """(model, processor) of a random `PaliGemmaForConditionalGeneration`: SigLIP vision
    tower, Gemma language model, BPE tokenizer with `<image>`, `<bos>`, `<eos>`, `<pad>`.
    `size="3b"`: PaliGemma-3B's sizes (SigLIP so400m/14 at 224 px, Gemma-2B, its vocabulary
    size) for GPU benchmarks; "tiny" for tests."""
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PaliGemmaProcessor, SiglipVisionConfig)
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if size not in ("tiny", "3b"):
        raise ValueError(f"unknown PaliGemma size {size!r}; allowed: 'tiny', '3b'")
    if size == "3b":
        image_size, patch_size = 224, 14
    n_image_tokens = (image_size // patch_size) ** 2
    tok = train_tokenizer(extra_specials=("<image>",), padding_side="left",
                          model_max_length=256)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_proc = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                         image_seq_length=n_image_tokens)
    processor = PaliGemmaProcessor(image_processor=image_proc, tokenizer=tok)
    vocab = len(processor.tokenizer)
    if size == "3b":
        vocab, width = 257216, 2048
        vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304,
                                    num_hidden_layers=27, num_attention_heads=16,
                                    image_size=image_size, patch_size=patch_size,
                                    vision_use_head=False)
        text = GemmaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=16384,
                           num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1,
                           head_dim=256, max_position_embeddings=8192,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id)
    else:
        width = 32
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, image_size=image_size,
                                    patch_size=patch_size, vision_use_head=False)
        text = GemmaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=16, max_position_embeddings=256,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id)
    # transformers' dataclass signature of PaliGemmaConfig omits the token-id kwargs it accepts
    config = PaliGemmaConfig(  # type: ignore[call-arg]  # see above
                             vision_config=vision, text_config=text,
                             image_token_index=processor.image_token_id, vocab_size=vocab,
                             projection_dim=width, hidden_size=width,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)
    with seeded(seed):
        model = PaliGemmaForConditionalGeneration(config)
    return model.eval(), processor
