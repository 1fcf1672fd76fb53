"""The real datasets' entry points: layout checks with instructions on where to get them.

Users download COCO-Karpathy, MedPix 2.0 and RSICap themselves (no download happens at run
time). This module knows each dataset's expected on-disk layout and says, when a folder is
absent or incomplete, exactly what was expected and where the data comes from. The
annotation readers themselves are not written yet: a complete folder gets a clear error
saying so (tracked in the real-datasets issue), never a silent fallback.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.base import DataError, ImageRecord
from datamodules.datamodule import RetrievalDataModule


class _LocalDataModule(RetrievalDataModule):
    #: alternatives of required relative paths; the layout is complete if any alternative is
    layouts: tuple[tuple[str, ...], ...] = ()
    layout_help: str = ""

    def prepare_data(self) -> None:
        root = self.root
        if not self.config.root:
            raise DataError(f"{self.name}: no data root given: pass --data-root PATH or set INSTRUCTSEE_DATA_ROOT.\n"
                            f"{self.layout_help}")
        if not root.is_dir():
            raise DataError(f"{self.name}: data root {root} does not exist.\n{self.layout_help}")
        if not any(all((root / p).exists() for p in alt) for alt in self.layouts):
            missing = [p for p in self.layouts[0] if not (root / p).exists()]
            raise DataError(
                f"{self.name}: {root} does not have the expected layout (missing: {', '.join(missing)}).\n"
                f"{self.layout_help}"
            )
        raise DataError(
            f"{self.name}: found the expected layout in {root}, but this version of the suite does not read "
            f"{self.name} yet (the annotation reader is still to be written); use --dataset synthetic."
        )

    def read_split(self, split: str) -> tuple[list[ImageRecord], list[Path]]:
        self.prepare_data()
        raise AssertionError("unreachable")


class CocoKarpathyDataModule(_LocalDataModule):
    name = "coco"
    layouts = (("dataset_coco.json", "train2014", "val2014"),
               ("annotations/coco_karpathy_test.json", "images/val2014"))
    layout_help = (
        "Expected either Karpathy's packaging:\n"
        "  <root>/dataset_coco.json  (from caption_datasets.zip)\n  <root>/train2014/*.jpg  <root>/val2014/*.jpg\n"
        "or the LAVIS/BLIP packaging:\n"
        "  <root>/annotations/coco_karpathy_{train,val,test}.json\n  <root>/images/train2014/  <root>/images/val2014/\n"
        "Get the images from cocodataset.org (2014 train/val) and the split file from Karpathy's "
        "caption_datasets.zip or the LAVIS/BLIP annotation files."
    )


class MedPixDataModule(_LocalDataModule):
    name = "medpix"
    layouts = (("Descriptions.json", "images", "splitted_dataset"),)
    layout_help = (
        "Expected the MedPix-2-0/ folder of the GitHub repository CHILab1/MedPix-2.0:\n"
        "  <root>/Descriptions.json  <root>/Case_topic.json  <root>/images/<image>.png\n"
        "  <root>/splitted_dataset/descriptions_{train,dev,test}.jsonl"
    )


class RSICapDataModule(_LocalDataModule):
    name = "rsicap"
    layouts = (("RSICap/captions.json", "RSICap/images"),)
    layout_help = (
        "Expected the dataset/ folder of the RSGPT repository (Lavender105/RSGPT):\n"
        "  <root>/RSICap/captions.json  <root>/RSICap/images/\n"
        "  <root>/RSIEval/annotations.json  <root>/RSIEval/images/  (optional, for VQA)"
    )
