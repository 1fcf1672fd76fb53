"""GPU-hour estimates of full-size runs, from the throughputs the suite measured at full shapes
(``results/gpu/gpu_costs.json``, written by ``scripts/bench_gpu.py``: one GPU, random-init
weights at the real architectures, inference, batch B).

These are ESTIMATES, built on the assumptions of :data:`ASSUMPTIONS` (printed with every plan):

* encode: ``throughput_img_s`` (vision tower + Q-Former per image);
* the retrieval step of B texts against B images costs ``B / step_img_s``; beyond encoding the
  B images, that is B texts encoded plus ``B x min(k, B)`` re-ranked (ITM) pairs (models with a
  ``k_test``), or B texts encoded (CLIP): the per-pair (per-text) cost is taken from it;
* training costs :data:`TRAIN_FACTOR` times the measured forward retrieval step per image
  (forward + backward ~ 3 forwards), every epoch over every training image;
* evaluation: every test image encoded once, then ``(queries + images) x k_test`` pairs
  re-ranked (both directions), or every query encoded (no re-ranking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from datamodules.safe_json import read_json

#: training step cost / forward retrieval step cost, per image (forward + backward ~ 3 forwards)
TRAIN_FACTOR = 3.0

ASSUMPTIONS = (
    (
        "estimates, not measurements: throughputs are those of {source} ({device}, {dtype}, batch {batch}, "
        "random-init weights at full shapes, inference)"
    ),
    (
        f"training: {TRAIN_FACTOR:g} x the measured forward retrieval step per image (forward + backward), "
        "every training image every epoch; validation passes, data loading, feature caching and checkpoint "
        "writes are not counted; frozen-feature caching (blip2, ours) would make training cheaper"
    ),
    (
        "evaluation: every test image encoded once (encode img/s), then (queries + images) x k_test pairs "
        "re-ranked at the per-pair cost of the measured retrieval step (its cost beyond encoding), or every "
        "query encoded (no re-ranking)"
    ),
    "one GPU of the measured kind; the recipe's precision and batch size are not those of the measurement",
)


class CostError(ValueError):
    """The measured-cost file is absent or not in the expected form."""


@dataclass(frozen=True)
class ModelCost:
    encode_img_s: float
    step_img_s: float
    batch: int
    k_test: int | None  # the k of the measured step (None: no re-ranking)

    def __post_init__(self) -> None:
        for name in ("encode_img_s", "step_img_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CostError(f"{name} must be a positive finite number, got {value!r}")
        if self.batch < 1:
            raise CostError(f"batch must be >= 1, got {self.batch}")
        if self.k_test is not None and self.k_test < 0:
            raise CostError(f"k_test must be >= 0 or null, got {self.k_test}")

    @property
    def _beyond_encoding_s(self) -> float:
        """Seconds of one measured step beyond encoding its B images (texts + re-ranking)."""
        return max(self.batch / self.step_img_s - self.batch / self.encode_img_s, 0.0)

    @property
    def pair_s(self) -> float:
        """Seconds per re-ranked pair (its query's text encoding folded in)."""
        pairs = self.batch * min(self.k_test or 0, self.batch)
        return self._beyond_encoding_s / pairs if pairs else 0.0

    @property
    def text_s(self) -> float:
        return self._beyond_encoding_s / self.batch


@dataclass(frozen=True)
class CostTable:
    source: str
    device: str
    dtype: str
    batch: int
    models: dict[str, ModelCost]

    def assumptions(self) -> list[str]:
        return [
            a.format(source=self.source, device=self.device, dtype=self.dtype, batch=self.batch) for a in ASSUMPTIONS
        ]


def load_costs(path: Path) -> CostTable:
    """The per-model throughputs of a ``gpu_costs.json``."""
    if not Path(path).exists():
        raise CostError(f"--gpu-costs: {path}: file not found (written by scripts/bench_gpu.py)")
    try:
        doc = read_json(Path(path), what="GPU cost file")
        settings, models = doc["settings"], doc["models"]
        batch = int(settings["batch_size"])
        costs = {
            name: ModelCost(float(m["throughput_img_s"]), float(m["step_img_s"]), batch, m.get("k_test"))
            for name, m in models.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CostError(
            f"--gpu-costs: {path}: not a gpu_costs.json of scripts/bench_gpu.py ({type(e).__name__}: {e})"
        ) from None
    device = (doc.get("environment") or {}).get("cuda_device_name") or "unknown device"
    return CostTable(str(path), device, str(settings.get("dtype", "?")), batch, costs)


@dataclass(frozen=True)
class Estimate:
    train_h: float
    eval_h: float

    @property
    def total_h(self) -> float:
        return self.train_h + self.eval_h


def estimate(
    cost: ModelCost, *, epochs: int, train_images: int, test_images: int, queries: int, k_test: int | None
) -> Estimate:
    """GPU hours of one run (see the module docstring)."""
    train_s = train_images * epochs * TRAIN_FACTOR / cost.step_img_s
    eval_s = test_images / cost.encode_img_s
    if k_test and cost.k_test:
        pairs = queries * min(k_test, test_images) + test_images * min(k_test, queries)
        eval_s += pairs * cost.pair_s
    else:
        eval_s += queries * cost.text_s
    return Estimate(train_s / 3600, eval_s / 3600)
