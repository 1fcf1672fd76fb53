"""The real datasets of ``bench reproduce --size full --data-root DIR``: which are under DIR, and
how large their splits are.

Each dataset of :data:`FOLDERS` is looked for in its folders under DIR (the first that exists);
its size is counted from its annotation files alone, through the dataset's own
``read_split`` (no image is opened or decoded): images of the training split, images and
captions (the queries) of the evaluated split. A folder that is absent is reported as
skipped; a folder whose layout or annotations are wrong as unusable (with the dataset's own
message).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmark.config import ConfigError, from_dict
from benchmark.registry import DATASETS
from datamodules.base import DataError
from datamodules.datamodule import DataConfig

#: dataset -> the folders under DIR it may live in (first found wins): the layouts of README
#: "Real datasets" (``medpix`` is the ``MedPix-2-0/`` folder of CHILab1/MedPix-2.0)
FOLDERS: dict[str, tuple[str, ...]] = {
    "coco": ("coco",),
    "medpix": ("medpix", "MedPix-2-0"),
    "rsicap": ("rsicap",),
}


@dataclass(frozen=True)
class SplitSizes:
    train_images: int
    test_images: int
    test_queries: int  # captions of the evaluated split: one instruction each

    def __post_init__(self) -> None:
        if min(self.train_images, self.test_images, self.test_queries) < 0:
            raise ValueError("split sizes must be >= 0")


@dataclass(frozen=True)
class FoundDataset:
    """A dataset of DIR: its folder and sizes, or why it is not used (``problem``)."""

    name: str
    folder: Path | None
    sizes: SplitSizes | None = None
    problem: str = ""

    @property
    def usable(self) -> bool:
        return self.sizes is not None


def count_splits(name: str, folder: Path, data: dict | None = None) -> SplitSizes:
    """Sizes of ``name``'s training and evaluated splits in ``folder`` (annotations only).
    ``data``: the run's ``data`` options (dataset ``options``, ``eval_split``)."""
    config = from_dict(DataConfig, {**(data or {}), "root": str(folder)}, "data")
    module = DATASETS.get(name)(config)
    module.layout()  # the dataset's own message when the folder is not in a known layout
    train, _ = module.read_split("train")
    test, _ = module.read_split(config.eval_split)
    return SplitSizes(len(train), len(test), sum(len(r.captions) for r in test))


def find_datasets(root: Path, data: dict | None = None) -> list[FoundDataset]:
    """Every dataset of :data:`FOLDERS` (registered ones), found under ``root`` or not."""
    out = []
    for name, folders in FOLDERS.items():
        if name not in DATASETS:
            continue
        folder = next((root / f for f in folders if (root / f).is_dir()), None)
        if folder is None:
            where = " or ".join(str(root / f) for f in folders)
            out.append(FoundDataset(name, None, problem=f"not found: no folder {where}"))
            continue
        try:
            out.append(FoundDataset(name, folder, count_splits(name, folder, data)))
        except (DataError, ConfigError, OSError) as e:
            out.append(FoundDataset(name, folder, problem=f"unusable: {e}".splitlines()[0]))
    return out
