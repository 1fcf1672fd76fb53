"""The cost measurement of every ``bench run``: FLOPs per component, peak memory, throughput.

Called by :func:`benchmark.runner.run` after the evaluation (``eval.measure``, default on;
settings ``eval.measurement.*``, :class:`~benchmark.measure.settings.MeasureConfig`). On a
sample of real test inputs drawn with the run's seed, in eval mode, with the thread count
pinned (and restored):

* **FLOPs** (models with ``cost_components``, ``lightning_modules/cost.py``): fvcore
  multiply-adds per component and item, mean and spread over the sample -> ``gflops/<c>``,
  ``gflops/<c>_std|_min|_max``, ``gflops/total``;
* **memory and the cold call** (fresh process, :mod:`benchmark.measure.probe`, run while the
  FLOPs are counted) -> ``memory_mb`` (CPU: peak RSS; GPU: ``max_memory_allocated``, with
  ``memory_mb_reserved``) and ``throughput_cold_s`` (the first ``encode_images`` call of a
  freshly loaded model; in process after the evaluation when ``measurement.memory`` is off);
* **throughput** (after the probe has finished): ``encode_images`` of a fixed batch of real
  test images, warm-up, then the median of >= 5 timed calls -> ``throughput_img_s``; and
  query time: ``score(encode_texts(batch of instructions), encoded test gallery)`` ->
  ``throughput_query_s`` (instructions per second).

The timed calls run in the evaluation's precision (``eval.precision``: autocast at full size on
a GPU), the FLOPs count and the probe in float32. Everything the figures depend on (batch sizes,
repeats, threads, device, precision, sample, timings of the measurement itself) is returned in
``record`` and stored under ``measurement`` in the
result file.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.measure.component_flops import measure_component_flops
from benchmark.measure.probe import ProbeResult, model_source, run_probe
from benchmark.measure.settings import MeasureConfig
from benchmark.measure.throughput import measure_throughput
from benchmark.threads import torch_threads
from datamodules.base import IndexedImages
from lightning_modules.base import Encoded
from lightning_modules.cost import CostModel, CostSample


@dataclass
class RunCosts:
    metrics: dict[str, float]
    record: dict[str, Any]


def pick(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` indices of ``range(n)``: distinct where possible, cycled to exactly ``k`` otherwise."""
    idx = rng.permutation(n)
    return np.resize(idx, k)


def pixel_batch(eval_set, transform, indices: np.ndarray) -> torch.Tensor:
    """The test images at ``indices``, through ``transform``, stacked."""
    images = IndexedImages(eval_set.image_paths, transform)
    return torch.stack([images[int(i)][1] for i in indices])


class _Background:
    """Run ``fn`` in a thread (the probe is another process: it only waits here)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.value = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in join()
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def _encode_gallery(model, batches: Iterable, limit: int | None):
    """The first ``limit`` gallery images (None: all) encoded batch by batch and kept in host
    memory, as the evaluation keeps its gallery (the scorer moves blocks to the device): device
    memory does not grow with the gallery (ViT-g tokens are 1.45 MB per image in float32)."""
    parts, n = [], 0
    with torch.inference_mode():
        for _, items in batches:
            if limit is not None and n >= limit:
                break
            items = items if limit is None else items[: limit - n]
            parts.append(model.encode_images(items).to("cpu"))
            n += len(items)
    return Encoded.cat(parts), n


def _flops(model, eval_set, transform, settings: MeasureConfig, rng) -> tuple[dict[str, float], dict]:
    if not isinstance(model, CostModel):
        return {}, {"skipped": f"{type(model).__name__} has no cost_components"}
    img = np.sort(rng.choice(eval_set.n_images, min(settings.flops_images, eval_set.n_images), replace=False))
    txt = np.sort(rng.choice(eval_set.n_queries, min(settings.flops_texts, eval_set.n_queries), replace=False))
    sample = CostSample(pixel_batch(eval_set, transform, img), tuple(eval_set.instructions[int(i)] for i in txt))
    metrics, detail = measure_component_flops(model, sample)
    return metrics, detail | {"sample": {"images": img.tolist(), "queries": txt.tolist()}}


def _memory(p: ProbeResult) -> tuple[dict[str, float], dict]:
    cuda = p.gpu_allocated_mb is not None
    metrics = {"memory_mb": p.gpu_allocated_mb if p.gpu_allocated_mb is not None else p.peak_rss_mb}
    if cuda and p.gpu_reserved_mb is not None:  # the probe records both CUDA peaks together
        metrics["memory_mb_reserved"] = p.gpu_reserved_mb
    method = (
        "torch.cuda.max_memory_allocated / max_memory_reserved in a fresh process"
        if cuda
        else "peak RSS (VmHWM) of a fresh process, interpreter and libraries included"
    )
    return metrics, p.to_dict() | {"method": method, "step": "encode_images + encode_texts + score at batch_size"}


def measure(
    model,
    eval_set,
    settings: MeasureConfig,
    *,
    model_name: str,
    source: Callable[[Path], dict] | None,
    gallery_batches: Callable[[], Iterable],
    device: str,
    seed: int,
    full_size: bool = False,
    precision: str = "32-true",
) -> RunCosts:
    """Measure ``model`` on ``eval_set`` (see the module docstring).

    ``precision``: the evaluation's (``eval.precision``): the timed calls run under the same
    autocast (``bf16-mixed`` at full size on a GPU), the FLOPs count and the fresh-process probe
    in float32; ``full_size``: a full-size run (its query-time gallery defaults to the first
    ``FULL_SIZE_QUERY_GALLERY`` images: :class:`MeasureConfig`);
    ``source(workdir)`` tells the probe how to load the model (None: no probe);
    ``gallery_batches()`` yields ``(index, items)`` batches of the test gallery as the
    evaluation feeds them (e.g. cached vision features) for query-time scoring.
    """
    t0 = time.perf_counter()
    was_training, model_device = model.training, next(model.parameters()).device
    with torch_threads(settings.threads):
        threads = torch.get_num_threads()
        model.to(device).eval()

        def rng(purpose: int) -> np.random.Generator:  # one stream per sample: each is the same whatever else runs
            return np.random.default_rng([seed, purpose])

        def timed(call: Callable[[], Any], items: int):  # a throughput figure, in the evaluation's precision
            with _autocast(precision, device):
                return measure_throughput(
                    call,
                    items,
                    device=device,
                    warmup=settings.warmup,
                    runs=settings.repeats,
                    min_time_s=settings.min_time_s,
                )

        transform = model.image_transform()
        metrics: dict[str, float] = {}
        seconds: dict[str, float] = {}
        record: dict[str, Any] = {
            "device": device,
            "precision": {"timed_calls": precision, "flops_and_probe": "32-true"},
            "threads": threads,
            "interop_threads": torch.get_num_interop_threads(),
            "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        }
        try:
            batch = pixel_batch(eval_set, transform, pick(rng(0), eval_set.n_images, settings.batch_size))
            texts = [eval_set.instructions[int(i)] for i in pick(rng(1), eval_set.n_queries, settings.query_batch)]
            probe = None
            with tempfile.TemporaryDirectory(prefix="bench_probe_") as tmp:
                if settings.memory and source is not None:
                    src = source(Path(tmp))
                    picked = pick(rng(2), eval_set.n_queries, settings.batch_size)
                    probe_texts = [eval_set.instructions[int(i)] for i in picked]
                    probe = _Background(
                        lambda: run_probe(
                            model_name, src, batch, probe_texts, device=device, threads=threads, workdir=Path(tmp)
                        )
                    )
                t = time.perf_counter()
                try:
                    flops, record["flops"] = _flops(model, eval_set, transform, settings, rng(3))
                    seconds["flops_s"] = time.perf_counter() - t
                finally:  # the probe writes into tmp: let it finish first, whatever happened here
                    if probe is not None:
                        probe.thread.join()
                        seconds["probe_wait_s"] = time.perf_counter() - t - seconds.get("flops_s", 0.0)
                metrics |= flops
                if probe is not None:
                    p = probe.join()
                    memory, record["memory"] = _memory(p)
                    metrics |= memory

            t = time.perf_counter()
            batch = batch.to(device)
            tp = timed(lambda: model.encode_images(batch), settings.batch_size)
            metrics["throughput_img_s"] = tp.items_per_s
            metrics["throughput_cold_s"] = p.cold_first_call_s if probe is not None else tp.cold_first_call_s
            record["throughput"] = tp.to_dict() | {
                "cold_call": (
                    "fresh process (memory probe)" if probe is not None else "in process, after the evaluation"
                )
            }
            seconds["throughput_s"] = time.perf_counter() - t

            t = time.perf_counter()
            gallery, n_gallery = _encode_gallery(model, gallery_batches(), settings.gallery_for(full_size))
            seconds["gallery_encode_s"] = time.perf_counter() - t
            t = time.perf_counter()
            qt = timed(lambda: model.score(model.encode_texts(texts), gallery), len(texts))
            metrics["throughput_query_s"] = qt.items_per_s
            record["query_throughput"] = qt.to_dict() | {
                "gallery_images": n_gallery,
                "step": "score(encode_texts(queries), encoded gallery)",
            }
            seconds["query_throughput_s"] = time.perf_counter() - t
        finally:
            model.to(model_device).train(was_training)
    seconds["total_s"] = time.perf_counter() - t0
    record["seconds"] = seconds
    return RunCosts(metrics, record)


def _autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """The autocast of a Lightning precision string (none for the true precisions)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def measure_run(cfg, model, model_config, dm, eval_set, *, checkpoint: Path | None, device: str) -> RunCosts:
    """:func:`measure` for one ``bench run`` (the runner's model, data and checkpoint)."""
    return measure(
        model,
        eval_set,
        cfg.eval.measurement,
        model_name=cfg.model,
        source=lambda workdir: model_source(model, model_config, checkpoint, workdir),
        gallery_batches=dm.gallery_dataloader,
        device=device,
        seed=cfg.seed,
        full_size=cfg.size == "full",
        precision=cfg.eval_settings()[0],
    )
