"""`clip`: the paper's CLIP path — any `CLIPModel` or `SiglipModel` checkpoint transformers loads,
by hub name (e.g. `openai/clip-vit-base-patch32`, needs internet) or local folder, fine-tuned
end to end with the contrastive loss of `rls3.vlm.contrastive`.

One function, `load_dual_encoder`, loads hub names and folders alike (including folders written
by `ClipVLM.save` and the tiny offline models of `rls3.vlm.tiny`), and converts OpenAI-CLIP /
open_clip ViT state-dict files (NegCLIP's `.pth`, OpenAI's `.pt`; `rls3.vlm.openai_clip`) in
memory. Images are resized (no centre crop, so nothing leaves the frame) to the checkpoint's
input size and normalised with its image processor's mean/std; SigLIP texts are padded to the
fixed length it was trained with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from rls3.vlm.common import aligned, load_hf_config, resize_batch
from rls3.vlm.contrastive import MAX_LOGIT_SCALE, ContrastiveVLM

if TYPE_CHECKING:
    from transformers import CLIPModel, SiglipModel

log = logging.getLogger(__name__)

#: config.model_type -> transformers model class name
MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel"}


def load_dual_encoder(source: str | Path, progress: bool = True) -> tuple[nn.Module, Any, Any]:
    """(model, tokenizer, image processor) of a CLIP or SigLIP checkpoint given as a hub name, a
    local transformers folder, or an OpenAI-CLIP / open_clip ViT state-dict file (or a folder
    holding one), converted in memory. Raises FileNotFoundError for a path that does not exist,
    ValueError (`rls3.vlm.openai_clip.CheckpointError` for state dicts) for a checkpoint of
    another kind, OSError (with the name) when the hub cannot provide it."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    from rls3.vlm.openai_clip import convert_checkpoint, is_state_dict_source

    if is_state_dict_source(source):
        return convert_checkpoint(source, progress=progress)
    src, config = load_hf_config(source, "CLIP/SigLIP", "clip")
    kind = getattr(config, "model_type", None)
    if kind not in MODEL_CLASSES:
        raise ValueError(f"checkpoint {str(source)!r} is a {kind!r} model; the clip adapter "
                         f"needs one of {sorted(MODEL_CLASSES)}")
    model = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    image_processor = AutoImageProcessor.from_pretrained(src)
    return aligned(model).eval(), tokenizer, image_processor


def _features(out: Any) -> torch.Tensor:
    """transformers < 5 returns the projected features, >= 5 an output with `pooler_output`."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipVLM(ContrastiveVLM):
    """A transformers CLIP/SigLIP dual encoder behind the `VLM` Protocol; all weights train.

    `weights`: hub name, folder or OpenAI-CLIP / open_clip state-dict file (see
    `load_dual_encoder`); `tiny`: 'clip' or 'siglip' builds a tiny random model offline instead
    (tests), 'clip-b32' or 'siglip-base' a random one of the paper's size (GPU benchmarks).
    The frozen prefix of the contrastive base class is just the resized uint8 pixels, so
    fine-tuning preprocesses each image once per call.
    """

    kind = "clip"
    module: CLIPModel | SiglipModel

    def __init__(self, name: str = "clip", *, weights: str | Path | None = None,
                 tiny: str | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, batch_size: int = 32, lr: float = 1e-5,
                 weight_decay: float = 0.1, grad_clip: float | None = 1.0, seed: int = 0,
                 progress: bool = True, mirror_augment: bool = False) -> None:
        super().__init__(name, device=device, dtype=dtype, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                         progress=progress, mirror_augment=mirror_augment)
        if weights is not None:
            model, tokenizer, image_processor = load_dual_encoder(weights, progress)
        elif tiny is not None:
            from rls3.vlm.tiny import tiny_clip
            model, tokenizer, image_processor = tiny_clip(tiny, seed=seed)
        else:
            raise ValueError("the clip adapter needs `weights` (a hub name such as "
                             "'openai/clip-vit-base-patch32', a local folder or an OpenAI-CLIP "
                             "/ open_clip .pt/.pth/.safetensors file)")
        self._install(model, tokenizer, image_processor)
        self._resume_optimizer_from(weights)

    def _install(self, model: nn.Module, tokenizer: Any, image_processor: Any) -> None:
        self.module = cast("CLIPModel | SiglipModel", model.to(self.device).eval())
        for p in self.module.parameters():
            p.requires_grad_(True)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        config: Any = model.config
        self.model_type = config.model_type
        vision = config.vision_config
        size = vision.image_size
        self.image_size = int(size if isinstance(size, int) else size[0])
        mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(image_processor, "image_std", None) or [0.5, 0.5, 0.5]
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.max_text_length = int(config.text_config.max_position_embeddings)

    # hooks -----------------------------------------------------------------------------------
    def image_inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(resize_batch(images, self.image_size))     # (N, S, S, 3) uint8

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        siglip = self.model_type == "siglip"
        enc = self.tokenizer(list(texts), padding="max_length" if siglip else True,
                             truncation=True, max_length=self.max_text_length,
                             return_tensors="pt")
        keep = ("input_ids",) if siglip else ("input_ids", "attention_mask")
        return {k: enc[k] for k in keep if k in enc}

    def image_suffix(self, h: torch.Tensor) -> torch.Tensor:
        x = h.permute(0, 3, 1, 2).float()
        x = (x - self._mean.to(x.device)) / self._std.to(x.device)
        return _features(self.module.get_image_features(pixel_values=x))

    def text_suffix(self, h: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(self.module.get_text_features(**h))

    def logit_scale(self) -> torch.Tensor:
        return self.module.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).reshape(())

    # checkpoints (`AdapterShell.save` / `load`) -----------------------------------------------
    def _save_weights(self, folder: Path) -> None:
        """A transformers checkpoint folder (model, tokenizer, image processor):
        `load_dual_encoder` reads it back."""
        self.module.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)

    def _checkpoint_options(self) -> dict[str, Any]:
        return {"model_type": self.model_type}

    def _load_weights(self, folder: Path, meta: dict[str, Any] | None) -> None:
        """The model of a `save` folder or of any CLIP/SigLIP transformers folder."""
        self._install(*load_dual_encoder(folder, self.progress))
