"""How a run measures its cost (``eval.measurement.*``): a typed, validated config.

Imports nothing heavy, so :mod:`benchmark.config` can hold it inside ``EvalConfig``. The
settings actually used (with the thread count and device) are recorded in every result
file under ``measurement``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the gallery of the query-time measurement at full size when none is given (COCO's 5k test split)
FULL_SIZE_QUERY_GALLERY = 5000
#: the largest gallery the query-time measurement re-encodes
MAX_QUERY_GALLERY = 1_000_000


@dataclass(frozen=True)
class MeasureConfig:
    """Cost measurement of a run (``benchmark/measure/run_costs.py``).

    flops_images / flops_texts: real test images and instructions the FLOPs are averaged over (each
        distinct input shape / query length is one fvcore trace, ~0.2-0.4 s for the tiny models here).
    batch_size: images per ``encode_images`` call when timing (throughput) and in the memory probe.
    query_batch: instructions per timed call of query-time scoring (encode + score against the
        encoded test gallery, held in host memory as the evaluation holds it).
    query_gallery: the gallery images of that scoring, the first N of the test split (at most
        ``MAX_QUERY_GALLERY``); None: the whole split at tiny size, its first
        ``FULL_SIZE_QUERY_GALLERY`` at full size (COCO-5k whole; a 100k gallery re-encoded would
        hold 145 GB of ViT-g tokens). The result records the number used.
    warmup / repeats / min_time_s: warm-up calls, timed calls (median; >= 5) and the least timed
        seconds per throughput figure.
    threads: torch intra-op threads while timing (None: the run's); restored afterwards.
    memory: run the fresh-process probe (peak memory and the cold first call).
    """

    flops_images: int = 2
    flops_texts: int = 8
    batch_size: int = 32
    query_batch: int = 32
    query_gallery: int | None = None
    warmup: int = 2
    repeats: int = 5
    min_time_s: float = 0.0
    threads: int | None = None
    memory: bool = True

    def __post_init__(self) -> None:
        for name in ("flops_images", "flops_texts", "batch_size", "query_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.measurement.{name} must be >= 1, got {getattr(self, name)}")
        if self.query_gallery is not None and not 1 <= self.query_gallery <= MAX_QUERY_GALLERY:
            raise ValueError(
                f"eval.measurement.query_gallery must be an integer in [1, {MAX_QUERY_GALLERY}] or null "
                f"(the whole test gallery at tiny size, its first {FULL_SIZE_QUERY_GALLERY} at full size)"
            )
        if self.repeats < 5:
            raise ValueError(f"eval.measurement.repeats must be >= 5 (a median of at least 5 runs), got {self.repeats}")
        if self.warmup < 0 or self.min_time_s < 0:
            raise ValueError("eval.measurement.warmup and min_time_s must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("eval.measurement.threads must be >= 1 or null")

    def gallery_for(self, full_size: bool) -> int | None:
        """The query-time gallery size of a run (None: the whole test split)."""
        return self.query_gallery or (FULL_SIZE_QUERY_GALLERY if full_size else None)
