"""open_clip's own ViT models through rls3's converter (`rls3.vlm.openai_clip`), at paper size on
a GPU machine where open_clip and torchvision import (not here: the CPU torch has no matching
torchvision). In run_all only by name (`benchmarks/run_all --only openclip_gpu`).

    python benchmarks/bench_openclip_gpu.py [--models ViT-B-32-quickgelu,ViT-B-16,ViT-L-14]
        [--out benchmarks/results/openclip_gpu.json]

Per model (random weights from open_clip's own constructor; no hub access): the state dict is
saved as an open_clip training checkpoint (`{"state_dict": {"module." + key: ...}}`), converted,
and the converted transformers CLIP's image and text embeddings are compared with open_clip's
`encode_image` / `encode_text` (float32, TF32 off) on open_clip's preprocessing of the same
images and its tokenizer's ids; the token ids and pixel tensors of rls3's tokenizer and image
processor are compared with open_clip's. Then the `clip` adapter is built from the .pth file on
the GPU in bf16 and times feedback, one fine-tuning epoch (with `loop.finetune`'s cosine learning
rate and shrink applied through the adapter) and evaluation on synthetic samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import Unavailable, main, names

import torch  # noqa: E402  (after _common: the allocator is chosen before torch loads)

OUT = "openclip_gpu.json"
#: open_clip model name -> the activation its checkpoints need (`rls3 convert --activation`)
ACTIVATIONS = {"ViT-B-32-quickgelu": "quick_gelu", "ViT-B-16": "gelu", "ViT-L-14": "gelu",
               "ViT-B-32": "gelu"}


def _features(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def check_model(name: str, samples: list, tmp: Path, dev: str) -> dict[str, Any]:
    import open_clip

    from rls3.vlm import build_vlm
    from rls3.vlm.openai_clip import convert_checkpoint

    torch.manual_seed(0)
    oc, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    oc = oc.eval().to(dev)
    ckpt = tmp / f"{name}.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v.cpu() for k, v in
                                           oc.state_dict().items()}}, ckpt)
    t = time.perf_counter()
    hf, tok, proc = convert_checkpoint(ckpt, activation=ACTIVATIONS[name], progress=False)
    convert_s = time.perf_counter() - t
    hf = hf.eval().to(dev)
    from PIL import Image

    images = [Image.fromarray(s.image) for s in samples[:16]]
    texts = [s.description.caption for s in samples[:64]]
    x_oc = torch.stack([preprocess(im) for im in images]).to(dev)
    x_hf = proc(images=images, return_tensors="pt")["pixel_values"].to(dev)
    ids_oc = open_clip.get_tokenizer(name)(texts).to(dev)
    enc = tok(texts, padding="max_length", max_length=ids_oc.shape[1], truncation=True,
              return_tensors="pt")
    same_ids = sum(int(torch.equal(a[a != 0].cpu(), b[m.bool()].cpu())) for a, b, m in
                   zip(ids_oc, enc["input_ids"], enc["attention_mask"], strict=True))
    with torch.no_grad():
        i_oc, i_hf = oc.encode_image(x_oc), _features(hf.get_image_features(pixel_values=x_oc))
        t_oc = oc.encode_text(ids_oc)
        t_hf = _features(hf.get_text_features(input_ids=enc["input_ids"].to(dev),
                                              attention_mask=enc["attention_mask"].to(dev)))
    res: dict[str, Any] = {
        "model": name, "params_m": sum(p.numel() for p in hf.parameters()) / 1e6,
        "convert_s": convert_s, "tokens_equal": f"{same_ids}/{len(texts)}",
        "pixels_max_abs_diff": float((x_oc - x_hf).abs().max()),
        "image_emb_max_abs_diff": float((i_oc - i_hf).abs().max()),
        "image_emb_scale": float(i_oc.abs().max()),
        "text_emb_max_abs_diff": float((t_oc - t_hf).abs().max()),
        "text_emb_scale": float(t_oc.abs().max()),
        "logit_scale_equal": bool(torch.allclose(oc.logit_scale.exp().cpu(),
                                                 hf.logit_scale.exp().cpu()))}
    del oc, hf
    torch.cuda.empty_cache()
    vlm = build_vlm("clip", weights=str(ckpt), device=dev, dtype="bfloat16", progress=False,
                    batch_size=32, lr=1e-5)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    phases: dict[str, float] = {}
    t = time.perf_counter()
    fb = vlm.feedback(samples[:64])
    torch.cuda.synchronize()
    phases["feedback_img_s"] = 64 / (time.perf_counter() - t)
    vlm.remember_initial()
    t = time.perf_counter()
    for f in (1.0, 0.5):          # two chunks at cosine-like rates
        vlm.set_lr_scale(f)
        losses = vlm.finetune(samples, 1)
    torch.cuda.synchronize()
    phases["finetune_img_s"] = 2 * len(samples) / (time.perf_counter() - t)
    vlm.shrink(0.5)
    t = time.perf_counter()
    m = vlm.evaluate(samples)
    torch.cuda.synchronize()
    phases["evaluate_img_s"] = len(samples) / (time.perf_counter() - t)
    res.update(phases, peak_gpu_gb=torch.cuda.max_memory_allocated() / 2**30,
               feedback_j2=fb.j2, finetune_loss_first_last=[losses[0], losses[-1]],
               eval_score=m.score)
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--models", default="ViT-B-32-quickgelu,ViT-B-16,ViT-L-14")
    ap.add_argument("--samples", type=int, default=256)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise Unavailable("no CUDA device: this check runs on a GPU machine with open_clip")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from rls3.vlm.synthetic import make_samples

    samples = make_samples(args.samples, seed=0, size=224)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                           "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names(args.models):
            r = check_model(name, samples, Path(tmp), "cuda")
            print(json.dumps(r), flush=True)
            out["models"].append(r)
    import open_clip
    import transformers

    out.update(open_clip=open_clip.__version__, transformers=transformers.__version__,
               numpy=np.__version__)
    return out


def table(res: dict[str, Any], out: Path) -> list[str]:
    lines = [f"{res['device']}, open_clip {res['open_clip']}, transformers "
             f"{res['transformers']}: open_clip's embeddings against the converted model's "
             "(float32, largest absolute difference / largest value), then the `clip` adapter "
             "in bf16.", "",
             "| model | params | tokens equal | image emb diff | text emb diff | feedback img/s | "
             "fine-tune img/s | eval img/s | peak GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        lines.append(f"| {m['model']} | {m['params_m']:.0f}M | {m['tokens_equal']} | "
                     f"{m['image_emb_max_abs_diff']:.1e} / {m['image_emb_scale']:.1f} | "
                     f"{m['text_emb_max_abs_diff']:.1e} / {m['text_emb_scale']:.1f} | "
                     f"{m['feedback_img_s']:.0f} | {m['finetune_img_s']:.0f} | "
                     f"{m['evaluate_img_s']:.0f} | {m['peak_gpu_gb']:.1f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
