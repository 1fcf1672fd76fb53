"""The LightningDataModule shared by every dataset of the suite.

A concrete dataset subclasses :class:`RetrievalDataModule` and implements two things:
``prepare_data`` (generate or check files; runs once per node) and ``read_split`` (turn
its annotation files into :class:`~datamodules.base.ImageRecord` lists). Everything else
-- training pairs, the evaluation set, and the two test dataloaders (gallery images, query
texts) -- is shared, so every model sees every dataset through the same code.

The image transform comes from the model (``set_transform``): the model owns its
preprocessing. A model may also install an *item loader* (``set_item_loader``): an object
with ``for_split(split, n_images, annotations_sha256, pixels) -> (index -> tensor)`` that
serves something else than pixels per image -- e.g. frozen vision features read from an
on-disk cache (``lightning_modules.components.feature_cache``). ``pixels(i)`` is the
default item (the transformed image), which the loader may use to compute what it serves.
Without a loader, every image is decoded and transformed as usual.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.base import (
    DataError,
    EvalSet,
    ImageRecord,
    IndexedImages,
    IndexedTexts,
    InstructionTemplates,
    TrainPairs,
    Transform,
    build_eval_set,
    collate_indexed,
    format_instruction,
    record_fields,
    sha256_of_files,
)
from datamodules.batch import collate_train
from datamodules.i2i import ViewImages
from datamodules.image_checks import ImageCheckCache, check_images
from datamodules.items import IndexedItems, ItemPairs
from datamodules.loading import MAX_WORKERS, LoaderRuntime, loader_kwargs, resolve_workers
from datamodules.sharding import RankBatches
from datamodules.templates_file import read_templates

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: the largest batch option accepted (training, evaluation, global)
MAX_BATCH = 1 << 20


@dataclass(frozen=True)
class DataConfig:
    """Options shared by every dataset.

    root: folder that holds (or will hold, for generated data) the dataset.
    batch_size: training batch size of each process; evaluation uses ``eval_batch_size``.
    global_batch_size: the training batch over all processes (the recipes' unit: LAVIS' 224
      is 14 per GPU on 16 GPUs); when set, the run config derives ``batch_size`` from it and
      the run's devices x nodes (:class:`benchmark.config.RunConfig`), so a recipe trains with
      the same batch on one GPU or on many. None: ``batch_size`` is per process as given.
    num_workers: DataLoader worker processes per process (0 = load in the main process);
      None = auto, decided by the dataset (``datamodules/loading.py``): 0 for the generated
      in-memory SynthScenes, the usable CPUs (at most 8) for real data read from disk.
      At most 64, and at most 4 per usable CPU (checked when the DataModule is built).
    eval_split: the split evaluated by ``bench run``.
    max_eval_images: evaluate on the first N images of the split only (None = all).
    cache_images: keep transformed training images in memory after their first load;
      None = the dataset's default (on for the small synthetic images, off for real data).
    templates: instruction templates (each with ``{caption}``); empty = the dataset's own. A
      string is the path of a templates file (``datamodules/templates_file.py``: one template
      per line, or a JSON list), read here: the config then holds the templates themselves.
    options: dataset-specific options, validated by the dataset's own config class.
    strict: a missing or unreadable image is an error at load time (``bench run --strict``);
      by default such images are dropped from their split with their captions, counted
      and listed in the result file (``data.skipped``). Real datasets only: the synthetic
      benchmark generates its own images and never checks them.
    """

    root: str = ""
    batch_size: int = 128
    eval_batch_size: int = 256
    global_batch_size: int | None = None
    num_workers: int | None = None
    eval_split: str = "test"
    max_eval_images: int | None = None
    cache_images: bool | None = None
    templates: tuple[str, ...] | str = ()
    options: dict = field(default_factory=dict)
    strict: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "global_batch_size"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_BATCH:
                raise ValueError(f"data.{name} must be an integer in [1, {MAX_BATCH}], got {value}")
        if self.num_workers is not None and not 0 <= self.num_workers <= MAX_WORKERS:
            raise ValueError(
                f"data.num_workers must be null (auto) or an integer in [0, {MAX_WORKERS}], got {self.num_workers}"
            )
        if self.eval_split not in SPLITS:
            raise ValueError(f"DataConfig.eval_split must be one of {SPLITS}, got {self.eval_split!r}")
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ValueError("DataConfig.max_eval_images must be >= 1 or None")
        templates = self.templates
        if isinstance(templates, str):
            templates = read_templates(templates) if templates else ()
        templates = tuple(templates)
        object.__setattr__(self, "templates", templates)
        if templates:
            InstructionTemplates(templates)  # validates them


def _keep(records: list[ImageRecord], kept_records: list[ImageRecord]) -> list[ImageRecord]:
    """``kept_records`` (a subset of ``records``), their relevance links to the others removed."""
    kept = {r.image_id for r in kept_records}
    if len(kept_records) == len(records):
        return list(records)
    return [
        replace(
            r,
            relevant_images=None
            if r.relevant_images is None
            else tuple(tuple(i for i in ids if i in kept) for ids in r.relevant_images),
            i2i_relevant=None if r.i2i_relevant is None else tuple(i for i in r.i2i_relevant if i in kept),
        )
        for r in kept_records
    ]


def _keep_first(records: list[ImageRecord], n: int) -> list[ImageRecord]:
    """The first ``n`` records, their relevance links to the images cut off removed."""
    return _keep(records, records[:n])


class RetrievalDataModule(L.LightningDataModule):
    """Serves training pairs and the evaluation structures of one dataset."""

    #: registry name of the dataset (set by subclasses)
    name: str = ""
    #: instruction templates used when the config names none
    default_templates: tuple[str, ...] = ("{caption}",)
    #: whether training images are cached in memory when the config does not say
    cache_images_default: bool = False
    #: check every image of a split once when it is first used (real datasets): missing or
    #: unreadable ones are dropped and listed by ``skipped()``, or refused with ``strict``
    check_images: bool = False
    #: per-record fields (besides ``{caption}``) that instruction templates may use
    template_fields: tuple[str, ...] = ()
    #: the queries of ``--task i2i`` (datamodules/i2i.py QUERY_PROTOCOLS): "gallery" (the
    #: records' own ``i2i_relevant``) or "augmented_view" (same image, a seeded augmented view)
    i2i_queries: str = "gallery"
    #: whether auto ``num_workers`` starts worker processes (datamodules/loading.py): real
    #: datasets decode images from disk; the generated SynthScenes keeps them in memory
    parallel_loading: bool = True

    def __init__(self, config: DataConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        given = cast(tuple[str, ...], config.templates)  # DataConfig reads a templates file into the tuple
        self.templates = InstructionTemplates(given or self.default_templates)
        unknown = sorted(self.templates.fields() - set(self.template_fields))
        if unknown:
            offered = ", ".join(f"{{{f}}}" for f in ("caption", *self.template_fields))
            raise DataError(
                f"data.templates: field {{{unknown[0]}}} is not offered by dataset {self.name!r} (it offers {offered})"
            )
        self._transform: Transform | None = None
        self._item_loader = None
        self._annotated: dict[str, list[ImageRecord]] = {}
        self._records: dict[str, list[ImageRecord]] = {}
        self._skipped: list[dict[str, Any]] = []
        self._files: dict[str, list[Path]] = {}
        self._eval_sets: dict[str, EvalSet] = {}
        self._runtime: LoaderRuntime | None = None
        self._check_cache_dir: Path | None = None
        try:  # refuse a fork storm now, not when the first DataLoader starts
            resolve_workers(config.num_workers, self.parallel_loading, LoaderRuntime())
        except ValueError as e:
            raise DataError(str(e)) from None

    # -- to implement ------------------------------------------------------------------
    def read_split(self, split: str) -> tuple[list[ImageRecord], list[Path]]:
        """Return the split's image records and the annotation files they came from."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.config.root)

    @property
    def _cache_images(self) -> bool:
        return self.cache_images_default if self.config.cache_images is None else self.config.cache_images

    def set_transform(self, transform: Transform) -> None:
        self._transform = transform

    def set_item_loader(self, loader) -> None:
        """Serve ``loader.for_split(...)`` items instead of transformed images (None = images)."""
        self._item_loader = loader

    def set_runtime(self, runtime: LoaderRuntime | None) -> None:
        """Where batches go (pinned memory for a GPU) and how many processes of the node load
        (auto ``num_workers``). Set by the runner from its Trainer; None: the attached
        Lightning Trainer's, else the CPU in one process."""
        self._runtime = runtime

    @property
    def runtime(self) -> LoaderRuntime:
        if self._runtime is not None:
            return self._runtime
        trainer = getattr(self, "trainer", None)
        return LoaderRuntime.of_trainer(trainer) if trainer is not None else LoaderRuntime()

    @property
    def num_workers(self) -> int:
        """DataLoader worker processes: ``DataConfig.num_workers``, or auto (datamodules/loading.py)."""
        return resolve_workers(self.config.num_workers, self.parallel_loading, self.runtime)

    def loader_settings(self) -> dict[str, Any]:
        """The DataLoader settings this process uses (recorded in the result file's ``data``)."""
        kwargs = loader_kwargs(self.num_workers, self.runtime)
        return {"num_workers": kwargs["num_workers"], "pin_memory": kwargs["pin_memory"]}

    def set_check_cache(self, directory: Path | None) -> None:
        """Keep the image check's verdicts in ``directory`` (``<cache>/image_checks``; set by the
        runner and ``bench data check``); None: check every image on every run."""
        self._check_cache_dir = None if directory is None else Path(directory)

    def check_cache(self) -> ImageCheckCache | None:
        """The image check cache of this dataset folder (None without ``set_check_cache``)."""
        if self._check_cache_dir is None or not self.config.root:
            return None
        return ImageCheckCache(self._check_cache_dir, self.root, self.name)

    def _item_fn(self, split: str, records: Sequence[ImageRecord]):
        """The item loader's ``index -> tensor`` for a split; None without a loader."""
        if self._item_loader is None:
            return None
        images = IndexedImages([r.path for r in records], self.transform, tolerant=self._tolerant)
        # the annotations and the exact records kept (images skipped or cut off change it)
        checksum = hashlib.sha256(
            "\n".join([sha256_of_files(self._files[split]), *(r.image_id for r in records)]).encode()
        ).hexdigest()
        return self._item_loader.for_split(split, len(records), checksum, images)

    def item_table(self, split: str):
        """The item loader's items of a whole split as one ``[n_images, ...]`` tensor (row ``i`` is
        image ``i``; e.g. cached vision tokens, memory-mapped when large), computing them now if
        they are not cached; None without an item loader (or one that serves no table)."""
        item_fn = self._item_fn(split, self.records(split))
        table = getattr(item_fn, "__self__", None)
        return table if isinstance(table, torch.Tensor) else None

    @property
    def transform(self) -> Transform:
        if self._transform is None:
            raise RuntimeError(f"{type(self).__name__}: call set_transform(model.image_transform()) first")
        return self._transform

    def annotated_records(self, split: str) -> list[ImageRecord]:
        """The split's records as the annotations list them (images not checked)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._annotated:
            records, files = self.read_split(split)
            if split == self.config.eval_split and self.config.max_eval_images is not None:
                records = _keep_first(records, self.config.max_eval_images)
            self._annotated[split] = records
            self._files[split] = files
        return self._annotated[split]

    def records(self, split: str) -> list[ImageRecord]:
        """The split's usable records: for datasets with ``check_images``, those whose image
        is missing or unreadable are dropped (listed by ``skipped()``) or, with
        ``DataConfig.strict``, refused with a :class:`DataError`."""
        if split not in self._records:
            records = self.annotated_records(split)
            if self.check_images:
                records = self._drop_unreadable(split, records)
            self._records[split] = records
        return self._records[split]

    def _drop_unreadable(self, split: str, records: list[ImageRecord]) -> list[ImageRecord]:
        reasons = check_images([r.path for r in records], cache=self.check_cache())
        bad = [(r, why) for r, why in zip(records, reasons, strict=True) if why is not None]
        if not bad:
            return records
        listing = "; ".join(f"{r.path}: {why}" for r, why in bad[:5]) + (" ..." if len(bad) > 5 else "")
        if self.config.strict:
            raise DataError(
                f"{self.name}: {len(bad)} of {len(records)} images of split {split!r} are missing or unreadable "
                f"(strict mode): {listing}"
            )
        log.warning("%s: skipping %d missing or unreadable images of split %r: %s", self.name, len(bad), split, listing)
        self._skipped.extend(
            {"split": split, "image_id": r.image_id, "path": str(r.path), "reason": why, "n_captions": len(r.captions)}
            for r, why in bad
        )
        good = [r for r, why in zip(records, reasons, strict=True) if why is None]
        if not good:
            raise DataError(f"{self.name}: no image of split {split!r} could be read (first: {listing})")
        return _keep(records, good)

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = split or self.config.eval_split
        if split not in self._eval_sets:
            records = self.records(split)
            sha = sha256_of_files(self._files[split])
            self._eval_sets[split] = build_eval_set(split, records, self.templates, sha, self.seed)
        return self._eval_sets[split]

    def vocabulary_texts(self) -> list[str]:
        """Texts a tiny model builds its vocabulary from: training captions and templates."""
        records = self.annotated_records("train")
        texts = [c.text for r in records for c in r.captions]
        texts += [c.instruction for r in records for c in r.captions if c.instruction is not None]
        field_sets: dict[tuple, dict[str, str]] = {}
        for r in records:
            fields = record_fields(r)
            field_sets.setdefault(tuple(sorted(fields.items())), fields)
        rendered = dict.fromkeys(
            format_instruction(t, "", fields)
            for t in self.templates.templates
            for fields in field_sets.values() or [{}]
        )
        return texts + list(rendered)

    def skipped(self) -> list[dict]:
        """Images skipped as missing or unreadable (listed in the result file): split,
        image id, path, reason and how many captions went with it."""
        return list(self._skipped)

    def content_identity(self) -> dict[str, Any]:
        """What the data's content adds to the identity of a trained checkpoint and of a result
        beyond the run config (which leaves out the data root): {} for the fixed datasets (their
        content is what their name says); the ``folder`` dataset, whose content is whatever the
        user's folder holds, returns its annotations' hash."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Dataset facts a result file should record beside the evaluated split (merged into
        its ``provenance``): e.g. the annotation packaging found, or how a split was made."""
        return {}

    @property
    def _tolerant(self) -> bool:
        return self.check_images and not self.config.strict

    def _stage_splits(self) -> tuple[str, ...]:
        """The splits the attached Trainer's current stage uses (fit: train and val; validate:
        val); otherwise -- no Trainer (the runner's own call), test, predict -- the evaluated split."""
        trainer = getattr(self, "trainer", None)
        fn = getattr(getattr(getattr(trainer, "state", None), "fn", None), "value", None)
        splits: dict[str | None, tuple[str, ...]] = {"fit": ("train", "val"), "validate": ("val",)}
        return splits.get(fn, (self.config.eval_split,))

    def prepare_data(self) -> None:
        """Check the images of the splits this stage uses (datasets with ``check_images``).

        Lightning calls this once per node, on local rank 0 (every rank waits at a barrier),
        before ``setup`` runs on every rank: the verdicts are written to the image check cache
        here (``set_check_cache``), and ``setup`` on the other ranks reads them instead of
        opening the images. Called outside Lightning (the runner, before training) it checks the
        evaluated split, so a bad image fails a ``--strict`` run before any training. Without a
        cache every process checks for itself, as it must.
        """
        if self.check_images:
            for split in self._stage_splits():
                self.records(split)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.records("train")
            self.records("val")
        if stage in (None, "test", "validate", "predict"):
            self.eval_set()

    def _loader(self, dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        """A training or validation loader of :class:`~datamodules.batch.TrainBatch` es."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=collate_train,
            **loader_kwargs(self.num_workers, self.runtime),
        )

    def _eval_loader(self, dataset) -> DataLoader:
        """An evaluation loader: consecutive batches, dealt whole to the ranks of a distributed run
        (:class:`~datamodules.sharding.RankBatches`; the Trainer must not replace the sampler)."""
        return DataLoader(
            dataset,
            batch_sampler=RankBatches(len(dataset), self.config.eval_batch_size),
            collate_fn=collate_indexed,
            **loader_kwargs(self.num_workers, self.runtime),
        )

    def train_dataloader(self) -> DataLoader:
        pairs = self._item_pairs("train") or TrainPairs(
            self.records("train"), self.transform, self.templates, cache=self._cache_images, tolerant=self._tolerant
        )
        return self._loader(pairs, self.config.batch_size, shuffle=True, drop_last=len(pairs) > self.config.batch_size)

    def val_dataloader(self) -> DataLoader:
        pairs = self._item_pairs("val") or TrainPairs(
            self.records("val"), self.transform, self.templates, cache=self._cache_images, tolerant=self._tolerant
        )
        return self._loader(pairs, self.config.eval_batch_size, shuffle=False)

    def gallery_dataloader(self, split: str | None = None) -> DataLoader:
        es = self.eval_set(split)
        item_fn = self._item_fn(split or self.config.eval_split, self.records(split or self.config.eval_split))
        if item_fn is not None:
            return self._eval_loader(IndexedItems(es.n_images, item_fn))
        images = IndexedImages(es.image_paths, self.transform, tolerant=self._tolerant)
        return self._eval_loader(images)

    def image_items(self, split: str):
        """``index -> tensor`` over the split's usable records: the item loader's items (e.g.
        cached frozen features) if the model installed one, else the transformed images."""
        records = self.records(split)
        item_fn = self._item_fn(split, records)
        if item_fn is not None:
            return item_fn
        images = IndexedImages([r.path for r in records], self.transform, tolerant=self._tolerant)
        return lambda i: images[i][1]

    def _item_pairs(self, split: str):
        """Training pairs served by the item loader (None without one)."""
        records = self.records(split)
        item_fn = self._item_fn(split, records)
        if item_fn is None:
            return None
        return ItemPairs(records, self.transform, self.templates, item_fn)

    def query_dataloader(self, split: str | None = None) -> DataLoader:
        es = self.eval_set(split)
        return self._eval_loader(IndexedTexts(es.instructions))

    def test_dataloader(self) -> Sequence[DataLoader]:
        return [self.gallery_dataloader(), self.query_dataloader()]

    def i2i_dataloaders(self, eval_set: EvalSet) -> list[DataLoader]:
        """``--task i2i``: the gallery, then the separate query images if ``eval_set`` has views."""
        loaders = [self.gallery_dataloader(eval_set.split)]
        if eval_set.i2i_views is not None:
            views = ViewImages(eval_set.image_paths, eval_set.i2i_views, self.transform)
            loaders.append(self._eval_loader(views))
        return loaders
