"""Building, training and caching the VQA model of ``--task vqa`` (and loading it for ``bench vqa``).

Tiny: the LM is pretrained on the training question / answer text, frozen, then the
projection (and the Q-Former, ``train_qformer``) is trained on the training questions; the
result is cached under ``<cache>/checkpoints/vqa__<retrieval checkpoint>__<hash>``, the hash
covering the VQA options, the seed and the data options, beside the retrieval checkpoint it
was trained from (which it names). Full (``task_args.lm``): the checkpoint's LM and
projection, evaluated as loaded (no training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmark.config import ConfigError, RunConfig, from_dict, stable_hash, to_dict
from benchmark.preflight import create_model
from benchmark.registry import MODELS
from benchmark.store import MissingCheckpointError, ensure_checkpoint, resolve_run
from benchmark.training import save_atomically
from datamodules.base import collate_indexed
from datamodules.qa import QAData
from datamodules.synthetic.questions import Question
from lightning_modules.contract import VqaPrefix
from lightning_modules.vqa import TextPretraining, VqaModel, VqaOptions, tiny_language_model


class PrefixItems(Dataset):
    """``(index, query outputs [n, H], mask [n], question, answer)`` per question, the query
    outputs computed once beforehand (``train_qformer`` off: the retrieval model is frozen)."""

    def __init__(self, questions: Sequence[Question], queries: torch.Tensor, mask: torch.Tensor) -> None:
        self.questions, self.queries, self.mask = list(questions), queries, mask

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int):
        q = self.questions[i]
        return i, self.queries[i], self.mask[i], q.question, q.answer


@torch.no_grad()
def precompute_prefixes(model: VqaModel, questions: Sequence[Question], items, batch_size: int):
    """Query outputs ``[N, n_max, H]`` and masks ``[N, n_max]`` of every question (zero-padded)."""
    outs, masks = [], []
    for _, images, qs, _ in _loader(QuestionItems(questions, items), batch_size, False):
        q, m = model.prefix_queries(images, qs)
        outs.append(q.cpu())
        masks.append(m.cpu())
    n = max(o.shape[1] for o in outs)
    queries = torch.cat([torch.nn.functional.pad(o, (0, 0, 0, n - o.shape[1])) for o in outs])
    return queries, torch.cat([torch.nn.functional.pad(m, (0, n - m.shape[1])) for m in masks])


class QuestionItems(Dataset):
    """``(index, image item, question, answer)`` per question."""

    def __init__(self, questions: Sequence[Question], items: Callable[[int], torch.Tensor]) -> None:
        self.questions, self.items = list(questions), items

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int):
        q = self.questions[i]
        return i, self.items(q.image_index), q.question, q.answer


def vqa_options(cfg: RunConfig) -> VqaOptions:
    options = from_dict(VqaOptions, cfg.task_args, "task_args")
    if cfg.size == "full" and not options.lm:
        raise ConfigError(
            "size 'full' VQA needs task_args.lm: a Blip2ForConditionalGeneration checkpoint "
            "(e.g. Salesforce/blip2-opt-2.7b or a local folder)"
        )
    if cfg.size == "tiny" and options.lm:
        raise ConfigError("task_args.lm is set: the full-size LM goes with --size full")
    return options


def full_size_vqa(retrieval, options: VqaOptions) -> VqaModel:
    """The full-size VQA model (``task_args.lm``), loaded; an absent or unreadable checkpoint is a ConfigError."""
    try:
        return VqaModel.create(retrieval, options)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"task_args.lm: cannot use {options.lm!r} as a Blip2ForConditionalGeneration "
            f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


#: VqaOptions fields that change how fast, not what, is trained: left out of the cache keys
UNKEYED = ("threads",)


def vqa_checkpoint_dir(cfg: RunConfig, retrieval_checkpoint: Path, options: VqaOptions) -> Path:
    key = stable_hash(
        [{k: v for k, v in to_dict(options).items() if k not in UNKEYED}, cfg.seed, cfg.data.options, cfg.dataset]
    )
    return Path(cfg.cache_dir) / "checkpoints" / f"vqa__{Path(retrieval_checkpoint).name}__{key}"


def _trainer(cfg: RunConfig, epochs: int, progress: bool) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator=cfg.train.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=cfg.train.deterministic,
        gradient_clip_val=cfg.train.gradient_clip_val,
        num_sanity_val_steps=0,
    )


def _loader(dataset, batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_indexed)


class PretrainingTexts(Dataset):
    """``(index, context + prompt, answer)`` per training question: the tiny LM's pretraining text."""

    def __init__(self, heads: Sequence[str], answers: Sequence[str]) -> None:
        self.heads, self.answers = list(heads), list(answers)

    def __len__(self) -> int:
        return len(self.heads)

    def __getitem__(self, i: int):
        return i, self.heads[i], self.answers[i]


def pretraining_texts(qa: QAData, options: VqaOptions) -> tuple[list[str], list[str]]:
    """``(text before the answer, answer)`` per training question: the image's content as words
    (when the dataset knows it), then the prompt."""
    train, _ = qa.training()
    context = qa.train_context or [""] * (1 + max(q.image_index for q in train))
    heads = [f"{context[q.image_index]} {options.prompt.format(question=q.question)}".strip() for q in train]
    return heads, [q.answer for q in train]


#: VqaOptions fields that determine the pretrained tiny LM (with the seed and the data)
LM_FIELDS = ("lm_hidden", "lm_layers", "lm_heads", "lm_epochs", "lm_lr", "lm_loss", "batch_size", "prompt")


def lm_checkpoint_dir(cfg: RunConfig, options: VqaOptions) -> Path:
    """The pretrained tiny LM, cached on its own: it sees text only, so it does not depend on the
    retrieval checkpoint, and every VQA model of the same data, seed and LM options reuses it."""
    key = stable_hash([{k: getattr(options, k) for k in LM_FIELDS}, cfg.seed, cfg.data.options, cfg.dataset])
    return Path(cfg.cache_dir) / "checkpoints" / f"vqa_lm__{cfg.dataset}__{cfg.size}__{key}"


def pretrained_language_model(cfg: RunConfig, options: VqaOptions, qa: QAData, progress: bool = False):
    """``(lm, tokenizer, provenance)``: the cached pretrained tiny LM, or a new one pretrained now
    (text only) and cached; provenance: its folder, whether it was pretrained now, the seconds."""
    path = lm_checkpoint_dir(cfg, options)
    if path.exists():
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return lm, tok, {"lm_checkpoint": str(path), "lm_trained_this_run": False}
    heads, answers = pretraining_texts(qa, options)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    lm, tok = tiny_language_model([f"{h} {a}" for h, a in zip(heads, answers)], options)
    t = time.perf_counter()
    if options.lm_epochs:
        _trainer(cfg, options.lm_epochs, progress).fit(
            TextPretraining(lm, tok, options.lm_lr, options.lm_loss),
            train_dataloaders=_loader(PretrainingTexts(heads, answers), options.batch_size, True),
        )
    seconds = time.perf_counter() - t
    lm.eval()
    save_atomically(_SavedLM(lm, tok), path)
    return lm, tok, {"lm_checkpoint": str(path), "lm_trained_this_run": True, "vqa_lm_pretrain_s": seconds}


class _SavedLM:
    """``save_checkpoint(directory)`` of an LM and its tokenizer (for ``save_atomically``)."""

    def __init__(self, lm, tokenizer) -> None:
        self.lm, self.tokenizer = lm, tokenizer

    def save_checkpoint(self, directory: Path) -> None:
        self.lm.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def train_vqa(
    cfg: RunConfig, retrieval, options: VqaOptions, qa: QAData, progress: bool = False
) -> tuple[VqaModel, dict]:
    """A new tiny VQA model and its provenance (LM folder, ``timings``): the pretrained LM (cached
    or pretrained now), frozen, then VQA training."""
    lm, tok, lm_provenance = pretrained_language_model(cfg, options, qa, progress)
    timings = {k: lm_provenance.pop(k) for k in list(lm_provenance) if k.endswith("_s")}
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = VqaModel.create(retrieval, options, lm=(lm, tok))
    t = time.perf_counter()
    if options.epochs:
        train, train_items = qa.training()
        data: Dataset
        if options.train_qformer:
            data = QuestionItems(train, train_items)
        else:
            model.eval()
            data = PrefixItems(train, *precompute_prefixes(model, train, train_items, options.batch_size))
            timings["vqa_prefixes_s"] = time.perf_counter() - t
        _trainer(cfg, options.epochs, progress).fit(model, train_dataloaders=_loader(data, options.batch_size, True))
    timings["vqa_train_s"] = time.perf_counter() - t
    return model, lm_provenance | {"timings": timings}


def ensure_vqa_model(
    cfg: RunConfig, retrieval, checkpoint: Path | None, qa: QAData, *, retrain: bool = False, progress: bool = False
) -> tuple[VqaModel, dict]:
    """The VQA model of a run and its provenance: full -- loaded; tiny -- cached or trained now."""
    options = vqa_options(cfg)
    if cfg.size == "full":
        return full_size_vqa(retrieval, options), {"lm": options.lm, "trained": False}
    if qa.train is None:
        raise ConfigError(
            f"{cfg.dataset}: its QA pairs are for evaluation only (no training questions): "
            "evaluate a full-size model (--size full, task_args.lm)"
        )
    if checkpoint is None:
        raise ConfigError("a tiny VQA model is trained on a trained retrieval model: train.max_epochs must be >= 1")
    path = vqa_checkpoint_dir(cfg, checkpoint, options)
    if path.exists() and not retrain:
        return VqaModel.load(path, retrieval), {"checkpoint": str(path), "trained_this_run": False}
    model, provenance = train_vqa(cfg, retrieval, options, qa, progress)
    save_atomically(model, path)
    return model, {"checkpoint": str(path), "trained_this_run": True} | provenance


def answer_questions(model: VqaModel, questions: Sequence[Question], items, batch_size: int) -> list[str]:
    model.eval()
    out: list[str] = []
    for _, images, qs, _ in _loader(QuestionItems(questions, items), batch_size, False):
        out += model.generate(images, qs)
    return out


def load_vqa_model(cfg: RunConfig) -> VqaModel:
    """``bench vqa``: the run's VQA model -- full: loaded; tiny: the cached one, never trained here."""
    if not issubclass(MODELS.get(cfg.model), VqaPrefix):
        raise ConfigError(
            f"model {cfg.model!r} cannot answer questions: it has no query outputs to feed a language "
            "model (the BLIP2 family can: ours, blip2)"
        )
    options = vqa_options(cfg)
    parts = resolve_run(cfg)
    if cfg.size == "full":
        return full_size_vqa(create_model(parts.model_cls, parts.model_config, cfg.train.optim), options)
    train_first = (
        f"run `bench run --task vqa --model {cfg.model} --dataset {cfg.dataset} --seed {cfg.seed}` with this "
        "command's --set / --config options first: it trains what this needs"
    )
    try:
        ckpt, _ = ensure_checkpoint(cfg, train=False)
    except MissingCheckpointError:  # the model or a model it starts from is not trained yet
        raise ConfigError(f"no trained {cfg.model} VQA model for this config yet: {train_first}") from None
    path = vqa_checkpoint_dir(cfg, ckpt, options)
    if not path.exists():
        raise ConfigError(f"no trained VQA model for this config in {path.parent}: {train_first}")
    return VqaModel.load(path, MODELS.get(cfg.model).load_checkpoint(ckpt))
