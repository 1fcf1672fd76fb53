"""Thumbnails of gallery images, read only from inside the data root.

An image's file is served only when its path, taken relative to the data root, passes
:class:`datamodules.paths.InsideRoot` (no ``..``, no absolute path, no symbolic link out of
the root): a gallery built from an annotation file cannot make the server read other files.
A gallery image whose file is not there but whose SynthScenes scene graph is recorded is
rendered from it (:func:`datamodules.synthetic.render.render_scene`, 64 px, a fixed seed: the
objects and background of the scene; background noise may differ from the generated file).
Each thumbnail is scaled to at most ``max_px`` on its longest side, encoded as PNG and kept in
a small in-memory LRU cache.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchmark.serve.gallery import Gallery
from datamodules.base import DataError
from datamodules.paths import InsideRoot
from datamodules.synthetic.render import render_scene
from datamodules.synthetic.scene import Scene

RENDER_PX = 64
CACHE_ITEMS = 512


class ThumbnailError(LookupError):
    """No thumbnail for this item (outside the root, missing, unreadable); the message says why."""


class Thumbnails:
    def __init__(self, gallery: Gallery, max_px: int = 160) -> None:
        self.gallery, self.max_px = gallery, max_px
        self.inside = InsideRoot(gallery.root)
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def _file(self, index: int) -> Path:
        path = Path(self.gallery.paths[index])
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.gallery.root))
        try:
            return self.inside(*Path(rel).parts, source="gallery", where=f"image {index}", field="path")
        except DataError as e:
            raise ThumbnailError(f"image {index} is not inside the data root") from e

    def _image(self, index: int) -> Image.Image:
        try:
            path = self._file(index)
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (ThumbnailError, OSError, UnidentifiedImageError) as e:
            scene = self.gallery.scenes[index] if self.gallery.scenes else None
            if scene is None:
                raise ThumbnailError(
                    str(e) if isinstance(e, ThumbnailError) else f"image {index} cannot be read"
                ) from e
            return render_scene(Scene.from_json(scene), RENDER_PX, np.random.default_rng(index))

    def png(self, index: int) -> bytes:
        if isinstance(index, bool) or not 0 <= index < len(self.gallery):
            raise ThumbnailError(f"no image {index} in the gallery (it has {len(self.gallery)})")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        image = self._image(index)
        image.thumbnail((self.max_px, self.max_px))
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=False)
        data = buf.getvalue()
        self._cache[index] = data
        while len(self._cache) > CACHE_ITEMS:
            self._cache.popitem(last=False)
        return data
