"""Random-weight checkpoints at the real architectures, written offline like hub repositories.

Shared by the GPU scripts (``scripts/bench_gpu.py``: throughput and memory per model;
``scripts/gpu_eval.py``: the full COCO-5k evaluation): nothing can be downloaded on the
machines that run them, so the full-size models are built from their configs with random
weights and written with ``save_pretrained``, beside a tokenizer and an image processor, as
a hub repository holds them. The suite then loads them through its own full-size path
(``model_args.pretrained``), the code that loads the real checkpoints.

* ``SCALES["full"]``: a ``Blip2ForImageTextRetrieval`` with transformers' BLIP-2 defaults,
  the layout of ``Salesforce/blip2-itm-vit-g`` (EVA ViT-g/14, 224 px, 39 layers, width 1408;
  12-layer Q-Former, 32 queries, vocabulary 30523), and a ``CLIPModel`` at ViT-L/14.
* ``SCALES["tiny"]``: the same structures with few layers and small widths, 32 px images,
  for CPU tests of the same code paths.

The tokenizer is the suite's word-level tokenizer (:mod:`lightning_modules.components.
word_tokenizer`) over ``vocab_texts`` (no pretrained tokenizer is available offline): one
token per word, as a WordPiece tokenizer gives for common English words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForImageTextRetrieval,
    BlipImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
)

from benchmark.atomic import atomic_write_text
from lightning_modules.components.word_tokenizer import build_word_tokenizer

#: default vocabulary of the written tokenizers (a few instructions of several domains)
INSTRUCTIONS = (
    "a man riding a wave on top of a surfboard",
    "two dogs playing with a red frisbee in a grassy park on a sunny afternoon",
    "a plate of food",
    "a kitchen with wooden cabinets, a white refrigerator and a window above the sink",
    "a bus",
    "a group of people standing around a table with laptops and coffee cups in an office",
    "an x-ray of the chest showing a small nodule in the upper lobe of the right lung",
    "an aerial image of a harbour with several ships docked next to storage tanks",
)
#: how a checkpoint's weights may be stored (``save_dtype``)
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Scale:
    """Architectures of one scale: ``transformers`` config kwargs of BLIP-2 and CLIP."""

    blip2: dict
    clip_text: dict
    clip_vision: dict
    clip_projection: int
    image_size: int
    text_length: int = 35


SCALES = {
    # BLIP-2's defaults are EVA ViT-g/14 and the 12-layer Q-Former of blip2-itm-vit-g
    "full": Scale(
        blip2=dict(
            qformer_config=dict(vocab_size=30523, use_qformer_text_input=True),
            num_query_tokens=32,
            image_text_hidden_size=256,
        ),
        clip_text=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
        ),
        clip_vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        clip_projection=768,
        image_size=224,
    ),
    "tiny": Scale(
        blip2=dict(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            ),
            qformer_config=dict(
                vocab_size=512,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                use_qformer_text_input=True,
                max_position_embeddings=64,
            ),
            num_query_tokens=8,
            image_text_hidden_size=16,
        ),
        clip_text=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40
        ),
        clip_vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        clip_projection=16,
        image_size=32,
    ),
}


def word_tokenizer(length: int, vocab_texts: Iterable[str] = INSTRUCTIONS):
    return build_word_tokenizer(list(vocab_texts), length)


def _save_dtype(name: str) -> torch.dtype:
    if name not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {sorted(SAVE_DTYPES)}, got {name!r}")
    return SAVE_DTYPES[name]


def write_blip2(
    path: Path, scale: Scale, device: str, *, save_dtype: str = "float32", vocab_texts: Iterable[str] = INSTRUCTIONS
) -> dict:
    """A random ``Blip2ForImageTextRetrieval`` (seed 0) saved like a hub repo (safetensors).

    ``save_dtype``: the stored weights' dtype. The config still declares float32, the dtype of
    the hub's ``blip2-itm-vit-g``, so ``from_pretrained`` without a ``dtype`` loads every weight
    as float32 as it loads the hub's file (the weights are then float16-rounded values): a
    half-precision file only halves the disk and the bytes read. Without that, transformers
    5 builds parts of the model in the config's float16 and others in float32."""
    dtype = _save_dtype(save_dtype)
    tok = word_tokenizer(scale.text_length, vocab_texts)
    cfg = Blip2Config(**scale.blip2)
    cfg.qformer_config.pad_token_id = tok.pad_token_id
    if len(tok) > cfg.qformer_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tok)} words but the Q-Former's vocabulary holds "
            f"{cfg.qformer_config.vocab_size}: use fewer vocab_texts"
        )
    torch.manual_seed(0)
    with torch.device(device):
        hf = Blip2ForImageTextRetrieval(cfg).eval()
        with torch.no_grad():  # transformers zero-initialises the queries: make them distinct
            hf.query_tokens.normal_(0, 0.02)
    params = sum(p.numel() for p in hf.parameters())
    if dtype != torch.float32:
        hf = hf.to(dtype)
    hf.save_pretrained(path)
    if dtype != torch.float32:
        _declare_float32(Path(path) / "config.json")
    tok.save_pretrained(path)
    BlipImageProcessor(size={"height": scale.image_size, "width": scale.image_size}).save_pretrained(path)
    del hf
    return {
        "parameters": params,
        "vision_layers": cfg.vision_config.num_hidden_layers,
        "vision_width": cfg.vision_config.hidden_size,
        "qformer_layers": cfg.qformer_config.num_hidden_layers,
        "num_query_tokens": cfg.num_query_tokens,
        "image_size": cfg.vision_config.image_size,
        "patch_size": cfg.vision_config.patch_size,
        "save_dtype": save_dtype,
        "vocabulary": len(tok),
    }


def _declare_float32(config_file: Path) -> None:
    """Set the saved config's ``dtype`` back to float32 (``save_pretrained`` writes the weights')."""
    config = json.loads(config_file.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    atomic_write_text(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_clip(path: Path, scale: Scale, device: str) -> dict:
    """A random ``CLIPModel`` (seed 0) saved like a hub repo (float32 safetensors)."""
    tok = word_tokenizer(scale.clip_text["max_position_embeddings"])
    text = dict(
        scale.clip_text,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = CLIPConfig(text_config=text, vision_config=scale.clip_vision, projection_dim=scale.clip_projection)
    torch.manual_seed(0)
    with torch.device(device):
        hf = CLIPModel(cfg).eval()
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    size = scale.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    params = sum(p.numel() for p in hf.parameters())
    del hf
    return {
        "parameters": params,
        "vision_layers": cfg.vision_config.num_hidden_layers,
        "vision_width": cfg.vision_config.hidden_size,
        "image_size": size,
        "patch_size": cfg.vision_config.patch_size,
    }


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
