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

import torch
from torch.utils.data import Dataset

from benchmark.config import ConfigError, RunConfig, from_dict, stable_hash, to_dict
from datamodules.base import IndexedTexts, collate_indexed
from datamodules.qa import QAData
from datamodules.synthetic.questions import Question
from lightning_modules.vqa import TextPretraining, VqaModel, VqaOptions


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
        raise ConfigError("size 'full' VQA needs task_args.lm: a Blip2ForConditionalGeneration checkpoint "
                          "(e.g. Salesforce/blip2-opt-2.7b or a local folder)")
    if cfg.size == "tiny" and options.lm:
        raise ConfigError("task_args.lm is set: the full-size LM goes with --size full")
    return options


def full_size_vqa(retrieval, options: VqaOptions) -> VqaModel:
    """The full-size VQA model (``task_args.lm``), loaded; an absent or unreadable checkpoint is a ConfigError."""
    try:
        return VqaModel.create(retrieval, options)
    except (OSError, ValueError) as e:
        raise ConfigError(f"task_args.lm: cannot use {options.lm!r} as a Blip2ForConditionalGeneration "
                          f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def vqa_checkpoint_dir(cfg: RunConfig, retrieval_checkpoint: Path, options: VqaOptions) -> Path:
    key = stable_hash([to_dict(options), cfg.seed, cfg.data.options, cfg.dataset])
    return Path(cfg.cache_dir) / "checkpoints" / f"vqa__{Path(retrieval_checkpoint).name}__{key}"


def _trainer(cfg: RunConfig, epochs: int, progress: bool):
    import lightning as L

    return L.Trainer(max_epochs=epochs, accelerator=cfg.train.accelerator, devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                     deterministic=cfg.train.deterministic, gradient_clip_val=cfg.train.gradient_clip_val,
                     num_sanity_val_steps=0)


def _loader(dataset, batch_size: int, shuffle: bool):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_indexed)


def train_vqa(cfg: RunConfig, retrieval, options: VqaOptions, qa: QAData, progress: bool = False) -> tuple[VqaModel, dict]:
    """A new tiny VQA model: LM pretraining on the training QA text, then VQA training."""
    import lightning as L

    timings = {}
    context = qa.train_context or [""] * (1 + max(q.image_index for q in qa.train))
    texts = [f"{context[q.image_index]} {options.prompt.format(question=q.question)} {q.answer}".strip()
             for q in qa.train]
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = VqaModel.create(retrieval, options, texts)
    t = time.perf_counter()
    if options.lm_epochs:
        model.lm.requires_grad_(True)
        _trainer(cfg, options.lm_epochs, progress).fit(
            TextPretraining(model.lm, model.tokenizer, options.lm_lr),
            train_dataloaders=_loader(IndexedTexts(texts), options.batch_size, True))
    model.lm.requires_grad_(False)  # frozen from here on
    model.lm.eval()
    timings["vqa_lm_pretrain_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if options.epochs:
        if options.train_qformer:
            data = QuestionItems(qa.train, qa.train_items)
        else:
            model.eval()
            data = PrefixItems(qa.train, *precompute_prefixes(model, qa.train, qa.train_items, options.batch_size))
            timings["vqa_prefixes_s"] = time.perf_counter() - t
        _trainer(cfg, options.epochs, progress).fit(model, train_dataloaders=_loader(data, options.batch_size, True))
    timings["vqa_train_s"] = time.perf_counter() - t
    return model, timings


def ensure_vqa_model(cfg: RunConfig, retrieval, checkpoint: Path | None, qa: QAData, *,
                     retrain: bool = False, progress: bool = False) -> tuple[VqaModel, dict]:
    """The VQA model of a run and its provenance: full -- loaded; tiny -- cached or trained now."""
    options = vqa_options(cfg)
    if cfg.size == "full":
        return full_size_vqa(retrieval, options), {"lm": options.lm, "trained": False}
    if qa.train is None:
        raise ConfigError(f"{cfg.dataset}: its QA pairs are for evaluation only (no training questions): "
                          "evaluate a full-size model (--size full, task_args.lm)")
    if checkpoint is None:
        raise ConfigError("a tiny VQA model is trained on a trained retrieval model: train.max_epochs must be >= 1")
    path = vqa_checkpoint_dir(cfg, checkpoint, options)
    if path.exists() and not retrain:
        return VqaModel.load(path, retrieval), {"checkpoint": str(path), "trained_this_run": False}
    model, timings = train_vqa(cfg, retrieval, options, qa, progress)
    from benchmark.runner import save_atomically

    save_atomically(model, path)
    return model, {"checkpoint": str(path), "trained_this_run": True, "timings": timings}


def answer_questions(model: VqaModel, questions: Sequence[Question], items, batch_size: int) -> list[str]:
    model.eval()
    out: list[str] = []
    for _, images, qs, _ in _loader(QuestionItems(questions, items), batch_size, False):
        out += model.generate(images, qs)
    return out


def load_vqa_model(cfg: RunConfig) -> VqaModel:
    """``bench vqa``: the run's VQA model -- full: loaded; tiny: the cached one, never trained here."""
    from benchmark.registry import MODELS
    from benchmark.runner import _resolve, ensure_checkpoint

    options = vqa_options(cfg)
    model_cls, model_config, _ = _resolve(cfg)
    if cfg.size == "full":
        return full_size_vqa(model_cls.create(model_config, cfg.train.optim), options)
    ckpt, _ = ensure_checkpoint(cfg, train=False)
    path = vqa_checkpoint_dir(cfg, ckpt, options)
    if not path.exists():
        raise ConfigError(f"no trained VQA model for this config in {path.parent} (run `bench run --task vqa "
                          f"--model {cfg.model} --dataset {cfg.dataset} --seed {cfg.seed}` first)")
    return VqaModel.load(path, MODELS.get(cfg.model).load_checkpoint(ckpt))
