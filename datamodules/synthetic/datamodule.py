"""The SynthScenes DataModule (registry name ``synthetic``): the suite's default benchmark.

``prepare_data`` generates the files once into ``<DataConfig.root>/synthscenes-v1-<hash>/``
(see ``generation.py``); ``read_split`` reads a split's annotation file (see
``annotations.py``) into image records with exact multi-positive relevance. Options come
from ``DataConfig.options`` (see :class:`~datamodules.synthetic.options.SyntheticOptions`).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.base import ImageRecord
from datamodules.datamodule import DataConfig, RetrievalDataModule
from datamodules.synthetic.annotations import annotation_path, read_annotations
from datamodules.synthetic.generation import ensure_generated
from datamodules.synthetic.options import SyntheticOptions


class SyntheticDataModule(RetrievalDataModule):
    """Procedurally generated scenes of shapes, with graded captions and exact relevance."""

    name = "synthetic"
    default_templates = (
        "Find images of {caption}.",
        "Show me {caption}.",
        "Retrieve a picture that shows {caption}.",
        "I am looking for an image with {caption}.",
        "Search for {caption}.",
    )
    cache_images_default = True  # 5,500 images of 64 px: a few hundred MB at most
    #: auto num_workers = 0: the images live in memory, and workers would draw the training
    #: captions and templates from their own generators (another run) -- datamodules/loading.py
    parallel_loading = False

    def __init__(self, config: DataConfig, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.options = SyntheticOptions.from_mapping(config.options)

    @property
    def cache_dir(self) -> Path:
        return self.options.cache_dir(self.root)

    def prepare_data(self) -> None:
        ensure_generated(self.options, self.root)

    def read_split(self, split: str) -> tuple[list[ImageRecord], list[Path]]:
        # generating here too lets callers that skip prepare_data (a notebook, a test) work;
        # generation is atomic, so concurrent callers cannot see half-written files
        cache = ensure_generated(self.options, self.root)
        path = annotation_path(cache, split).resolve()
        return read_annotations(path, split), [path]
