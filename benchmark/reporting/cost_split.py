"""GFLOPs split into what is paid once per gallery image and what is paid per query.

From the per-component figures every run records (``gflops/<component>``,
``lightning_modules/cost.py``; fvcore multiply-adds, per item):

* **gallery side** (per image, once, when the gallery is indexed): ``vision`` plus the
  Q-Former pass the index stores: ``qformer_index`` where the model records one (ours: the
  gallery pass at L_max, whose first L outputs every instruction's L queries read), else
  ``qformer`` (BLIP2 and the token-reduction models: the 32-query pass); CLIP has none;
* **query side** (per instruction): ``text`` (ours: with its QScaler) plus one ``rerank``
  pass (per re-ranked pair; counted once, as ``gflops/total`` does);
* **total** (the comparison table's cost column): gallery side + query side, i.e. the
  recorded ``gflops/total`` with ours' L-query ``qformer`` pass replaced by the gallery pass
  at L_max. ours' recorded total counts an L-query pass that retrieval never runs (its L
  outputs are read from the gallery index) and leaves out the L_max gallery pass, so its
  GFLOPs moved opposite to the measured ``throughput_img_s`` (which times ``encode_images``,
  the gallery side). Models without ``qformer_index`` keep their recorded total.

A run without the components yields None (the table falls back to the recorded total and
leaves the split columns missing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchmark.results import object_field

INDEX = "gflops/qformer_index"


def _get(metrics: Mapping[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def gallery_gflops(metrics: Mapping[str, Any]) -> float | None:
    vision = _get(metrics, "gflops/vision")
    if vision is None:
        return None
    qformer = _get(metrics, INDEX)
    if qformer is None:
        qformer = _get(metrics, "gflops/qformer")
    return vision + (qformer or 0.0)


def query_gflops(metrics: Mapping[str, Any]) -> float | None:
    text = _get(metrics, "gflops/text")
    if text is None:
        return None
    return text + (_get(metrics, "gflops/rerank") or 0.0)


def total_gflops(metrics: Mapping[str, Any]) -> float | None:
    """The recorded total with the gallery pass at L_max in place of an L-query pass (models
    recording ``qformer_index``); the recorded total otherwise; None without one."""
    total = _get(metrics, "gflops/total")
    index, per_query = _get(metrics, INDEX), _get(metrics, "gflops/qformer")
    if total is None or index is None:
        return total
    return total - (per_query or 0.0) + index


def gallery_length(result: dict) -> int | None:
    """The gallery pass's query count (ours' ``l_max``) from the stored model config, if any."""
    config = object_field(result, "model_config")
    value = config.get("l_max")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def note(results: list[dict]) -> str | None:
    """The table note on the cost columns when a run's total counts a gallery pass at L_max."""
    lengths = sorted(
        {
            n
            for r in results
            if _get(r.get("metrics") or {}, INDEX) is not None
            for n in [gallery_length(r)]
            if n is not None
        }
    )
    if not any(_get(r.get("metrics") or {}, INDEX) is not None for r in results):
        return None
    at = f" = {', '.join(map(str, lengths))}" if lengths else ""
    return (
        "GFLOPs (fvcore multiply-adds) = gallery side (per image: vision + the Q-Former pass the index stores) "
        "+ query side (per instruction: text tower, ours with its QScaler, + one re-rank pair). For ours the "
        f"gallery pass runs at L_max{at} queries (each instruction reads the first L of them), so its GFLOPs count "
        "that pass, not the L-query pass its recorded gflops/total holds; throughput (img/s) times the gallery "
        "side (encode_images)."
    )
