"""SynthScenes: the suite's embedded, procedurally generated image-text retrieval benchmark.

Scenes of 1 to 4 coloured shapes on a 3 x 3 grid over a patterned background, five
captions per image of complexity 1 to 5, and exact relevance:

* text-to-image: an image is relevant to a caption when its scene satisfies every
  constraint of the caption (objects matched to distinct scene objects, spatial relations
  between them, background) -- so "a red circle" has many relevant images;
* image-to-image: two images are relevant to each other when their scenes hold the same
  set of (colour, shape) object types (size, position, multiplicity and background
  ignored).

Files: ``vocabulary`` (the words), ``options`` (SyntheticOptions, cache folder name),
``seeding`` (per-image random streams), ``scene`` (scenes and their sampling), ``render``
(drawing), ``constraints`` (caption constraints, text and the exact check), ``captions``
(graded captions), ``relevance`` (fast exact relevance), ``annotations`` (the JSON format),
``generation`` (atomic cache generation), ``datamodule`` (SyntheticDataModule), ``describe``
(report helpers).
"""

from datamodules.synthetic.constraints import (
    BackgroundConstraint,
    CaptionConstraints,
    ObjectConstraint,
    Relation,
)
from datamodules.synthetic.datamodule import SyntheticDataModule
from datamodules.synthetic.describe import describe_benchmark, relevance_stats
from datamodules.synthetic.generation import ensure_generated, generate
from datamodules.synthetic.options import SyntheticOptions
from datamodules.synthetic.scene import Scene

__all__ = [
    "BackgroundConstraint",
    "CaptionConstraints",
    "ObjectConstraint",
    "Relation",
    "Scene",
    "SyntheticDataModule",
    "SyntheticOptions",
    "describe_benchmark",
    "ensure_generated",
    "generate",
    "relevance_stats",
]
