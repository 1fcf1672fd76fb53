"""The LightningDataModule shared by every dataset of the suite.

A concrete dataset subclasses :class:`RetrievalDataModule` and implements two things:
``prepare_data`` (generate or check files; runs once per node) and ``read_split`` (turn
its annotation files into :class:`~datamodules.base.ImageRecord` lists). Everything else
-- training pairs, the evaluation set, and the two test dataloaders (gallery images, query
texts) -- is shared, so every model sees every dataset through the same code.

The image transform comes from the model (``set_transform``): the model owns its
preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from datamodules.base import (
    EvalSet,
    ImageRecord,
    IndexedImages,
    IndexedTexts,
    InstructionTemplates,
    TrainPairs,
    Transform,
    build_eval_set,
    collate_indexed,
    sha256_of_files,
)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataConfig:
    """Options shared by every dataset.

    root: folder that holds (or will hold, for generated data) the dataset.
    batch_size: training batch size; evaluation uses ``eval_batch_size``.
    num_workers: DataLoader worker processes (0 = load in the main process).
    eval_split: the split evaluated by ``bench run``.
    max_eval_images: evaluate on the first N images of the split only (None = all).
    cache_images: keep transformed training images in memory after their first load;
      None = the dataset's default (on for the small synthetic images, off for real data).
    templates: instruction templates (each with ``{caption}``); empty = the dataset's own.
    options: dataset-specific options, validated by the dataset's own config class.
    """

    root: str = ""
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 0
    eval_split: str = "test"
    max_eval_images: int | None = None
    cache_images: bool | None = None
    templates: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("DataConfig.batch_size and eval_batch_size must be >= 1")
        if self.num_workers < 0:
            raise ValueError("DataConfig.num_workers must be >= 0")
        if self.eval_split not in SPLITS:
            raise ValueError(f"DataConfig.eval_split must be one of {SPLITS}, got {self.eval_split!r}")
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ValueError("DataConfig.max_eval_images must be >= 1 or None")
        object.__setattr__(self, "templates", tuple(self.templates))
        if self.templates:
            InstructionTemplates(self.templates)  # validates them


def _keep_first(records: list[ImageRecord], n: int) -> list[ImageRecord]:
    """The first ``n`` records, their relevance links to the images cut off removed."""
    kept_records = records[:n]
    kept = {r.image_id for r in kept_records}
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


class RetrievalDataModule(L.LightningDataModule):
    """Serves training pairs and the evaluation structures of one dataset."""

    #: registry name of the dataset (set by subclasses)
    name: str = ""
    #: instruction templates used when the config names none
    default_templates: tuple[str, ...] = ("{caption}",)
    #: whether training images are cached in memory when the config does not say
    cache_images_default: bool = False

    def __init__(self, config: DataConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        self.templates = InstructionTemplates(config.templates or self.default_templates)
        self._transform: Transform | None = None
        self._records: dict[str, list[ImageRecord]] = {}
        self._files: dict[str, list[Path]] = {}
        self._eval_sets: dict[str, EvalSet] = {}

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

    @property
    def transform(self) -> Transform:
        if self._transform is None:
            raise RuntimeError(f"{type(self).__name__}: call set_transform(model.image_transform()) first")
        return self._transform

    def records(self, split: str) -> list[ImageRecord]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._records:
            records, files = self.read_split(split)
            if split == self.config.eval_split and self.config.max_eval_images is not None:
                records = _keep_first(records, self.config.max_eval_images)
            self._records[split] = records
            self._files[split] = files
        return self._records[split]

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = split or self.config.eval_split
        if split not in self._eval_sets:
            records = self.records(split)
            sha = sha256_of_files(self._files[split])
            self._eval_sets[split] = build_eval_set(split, records, self.templates, sha, self.seed)
        return self._eval_sets[split]

    def vocabulary_texts(self) -> list[str]:
        """Texts a tiny model builds its vocabulary from: training captions and templates."""
        texts = [c.text for r in self.records("train") for c in r.captions]
        return texts + [t.format(caption="") for t in self.templates.templates]

    def skipped(self) -> list[dict]:
        """Images skipped as missing or unreadable (listed in the result file)."""
        return []

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.records("train")
            self.records("val")
        if stage in (None, "test", "validate", "predict"):
            self.eval_set()

    def _loader(self, dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            collate_fn=collate_indexed,
        )

    def train_dataloader(self) -> DataLoader:
        pairs = TrainPairs(self.records("train"), self.transform, self.templates, cache=self._cache_images)
        return self._loader(pairs, self.config.batch_size, shuffle=True, drop_last=len(pairs) > self.config.batch_size)

    def val_dataloader(self) -> DataLoader:
        pairs = TrainPairs(self.records("val"), self.transform, self.templates, cache=self._cache_images)
        return self._loader(pairs, self.config.eval_batch_size, shuffle=False)

    def gallery_dataloader(self, split: str | None = None) -> DataLoader:
        es = self.eval_set(split)
        return self._loader(IndexedImages(es.image_paths, self.transform), self.config.eval_batch_size, False)

    def query_dataloader(self, split: str | None = None) -> DataLoader:
        es = self.eval_set(split)
        return self._loader(IndexedTexts(es.instructions), self.config.eval_batch_size, False)

    def test_dataloader(self) -> Sequence[DataLoader]:
        return [self.gallery_dataloader(), self.query_dataloader()]
