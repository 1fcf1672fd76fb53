"""Shared base of the real datasets read from a local folder (COCO, MedPix, RSICap).

Users download these datasets themselves; nothing is downloaded at run time. A subclass
declares its accepted on-disk layouts (``layouts``: name -> required relative paths) and a
``layout_help`` text saying what is expected and where to get it; an absent root, or one
that matches no layout, gets a :class:`DataError` carrying that help. Images are checked
once per split (``check_images``; in ``prepare_data``, with the verdicts cached on disk by
``datamodules/image_checks.py``): missing or unreadable ones are skipped and listed in the
result file, or refused with ``--strict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datamodules.base import DataError
from datamodules.datamodule import DataConfig, RetrievalDataModule
from datamodules.validate import parse_options


class LocalDataModule(RetrievalDataModule):
    """A dataset read from ``DataConfig.root`` in one of the ``layouts`` it knows."""

    check_images = True
    #: layout name -> relative paths that must exist for that layout (first match wins)
    layouts: Mapping[str, tuple[str, ...]] = {}
    #: what the folder must hold and where the data comes from (shown with every layout error)
    layout_help: str = ""
    #: the dataset's options dataclass (fields with defaults), filled from DataConfig.options
    Options: type | None = None

    def __init__(self, config: DataConfig, seed: int = 0) -> None:
        super().__init__(config, seed)
        if self.Options is not None:
            self.options = parse_options(self.Options, config.options, self.name)
        elif config.options:
            raise DataError(f"dataset {self.name!r} takes no data.options, got {sorted(config.options)}")
        self._layout: str | None = None

    def layout(self) -> str:
        """The name of the layout found under the root; a DataError with help otherwise."""
        if self._layout is not None:
            return self._layout
        root = self.root
        if not self.config.root:
            raise DataError(
                f"{self.name}: no data root given: pass --data-root PATH or set INSTRUCTSEE_DATA_ROOT "
                f"(the dataset is then read from $INSTRUCTSEE_DATA_ROOT/{self.name}).\n{self.layout_help}"
            )
        if not root.is_dir():
            raise DataError(f"{self.name}: data root {root} does not exist or is not a folder.\n{self.layout_help}")
        for name, required in self.layouts.items():
            if all((root / p).exists() for p in required):
                self._layout = name
                return name
        missing = "; ".join(
            f"{name}: {', '.join(p for p in required if not (root / p).exists())}"
            for name, required in self.layouts.items()
        )
        raise DataError(
            f"{self.name}: {root} does not have the expected layout (missing, per accepted layout: {missing}).\n"
            f"{self.layout_help}"
        )

    def prepare_data(self) -> None:
        self.layout()
        super().prepare_data()  # checks the images of the stage's splits (a --strict run fails before training)

    def describe(self) -> dict[str, Any]:
        return {"dataset_layout": self.layout(), "dataset_options": asdict(self.options) if self.Options else {}}

    def extra_checks(self) -> list[tuple[str, bool]]:
        """Lines ``bench data check`` prints after the per-split counts (e.g. RSIEval QA
        pairs), each with whether it is fine."""
        return []

    def check_split_names(self) -> dict[str, str]:
        """The suite's split names -> the dataset's own (for ``bench data check``)."""
        return {"train": "train", "val": "val", "test": "test"}

    def resolve(self, relative: str) -> Path:
        return self.root / relative
