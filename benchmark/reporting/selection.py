"""Which runs a report compares: the model comparison's rows and each model's main run.

* Comparison rows: every run that is not a non-default arm of an ablation (those go to the
  ablation tables), per dataset; runs whose configs differ only in their tag (e.g. the
  default arm of each ``bench ablate`` beside the plain ``bench run``) are one row, the
  tag ``default`` first, else the first tag.
* A model's *main run* on a dataset and size (used by the claims): its comparison run with
  tag ``default`` if there is one, else the first by tag; the claims name the file they used.
* Models are listed in the paper's order (CLIP, DynamicViT, CrossGET, BLIP2, ours), then
  any other model alphabetically.
"""

from __future__ import annotations

from benchmark.reporting.ablation_arms import comparable_key, is_ablation_variant
from benchmark.reporting.per_query import result_name

MODEL_ORDER = ("clip", "dynamicvit", "crossget", "blip2", "ours")
DEFAULT_TAG = "default"


def model_rank(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model), "") if model in MODEL_ORDER else (len(MODEL_ORDER), model)


def run_order(result: dict) -> tuple:
    return (
        *model_rank(str(result.get("model"))),
        str(result.get("size")),
        str(result.get("tag")) != DEFAULT_TAG,
        str(result.get("tag")),
    )


def comparison_runs(results: list[dict]) -> list[dict]:
    kept: dict[str, dict] = {}
    for r in sorted((r for r in results if not is_ablation_variant(r)), key=run_order):
        kept.setdefault(comparable_key(r, ablated="") if r.get("config") else result_name(r), r)
    return list(kept.values())


def datasets(results: list[dict]) -> list[str]:
    return sorted({str(r.get("dataset")) for r in results})


def scopes(results: list[dict]) -> list[tuple[str, str]]:
    """(dataset, size) pairs present, sorted."""
    return sorted({(str(r.get("dataset")), str(r.get("size"))) for r in results})


def scope_runs(results: list[dict], model: str, dataset: str, size: str) -> list[dict]:
    """The comparison runs of ``model`` on this dataset and size, tag ``default`` first, else by tag."""
    return [
        r
        for r in comparison_runs(results)
        if (r.get("model"), r.get("dataset"), r.get("size")) == (model, dataset, size)
    ]


def main_run(results: list[dict], model: str, dataset: str, size: str) -> dict | None:
    runs = scope_runs(results, model, dataset, size)
    return runs[0] if runs else None
