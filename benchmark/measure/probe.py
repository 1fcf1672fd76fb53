"""Peak memory and the cold first call of one model, measured in a fresh process.

A peak cannot be reset inside a process that already trained and evaluated, and a first call
is only cold in a process that has not run the model yet; so the run's model is loaded anew
in a child process (:func:`benchmark.measure.memory.peak_rss_mb_in_fresh_process`) that

1. loads the model from its source -- the run's checkpoint folder, or the pretrained
   config (full size without training), or a folder the parent saved it to;
2. times the first ``encode_images`` call on a batch of real test images (the cold call:
   lazy initialisation, allocator growth, first kernels);
3. runs one inference step at that batch size: ``encode_images`` + ``encode_texts`` of as
   many real instructions + ``score`` of those instructions against those images;

and reports its peak resident set size (``VmHWM``; CPU) or, on a GPU,
``max_memory_allocated`` and ``max_memory_reserved`` of the step (weights included). The
CPU figure includes the interpreter and the imported libraries (~0.5 GB): compare models
measured the same way only.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmark.config import from_dict, to_dict
from benchmark.measure.memory import gpu_peak_memory_mb, peak_rss_mb_in_fresh_process
from benchmark.registry import MODELS
from lightning_modules.contract import SuiteModel, check_model_class
from lightning_modules.optim import OptimConfig

TARGET = "benchmark.measure.probe:probe"


@dataclass(frozen=True)
class ProbeResult:
    peak_rss_mb: float
    cold_first_call_s: float
    gpu_allocated_mb: float | None
    gpu_reserved_mb: float | None
    batch_size: int
    device: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_source(model, model_config, checkpoint: Path | None, workdir: Path) -> dict[str, Any]:
    """How the child gets the model: a checkpoint folder, a pretrained config, or a fresh save; and
    its class by import path (``module:Class``), so a model registered at run time (a plugin, a
    test) loads in the child without its registration."""
    cls = {"class": f"{type(model).__module__}:{type(model).__qualname__}"}
    if checkpoint is not None and Path(checkpoint).is_dir():
        # the run's evaluation-only options (benchmark/store.py), which the checkpoint does not hold
        eval_only = {k: getattr(model.config, k) for k in getattr(type(model), "eval_only_fields", ())}
        return {"checkpoint": str(checkpoint)} | cls | ({"eval_only": eval_only} if eval_only else {})
    if getattr(model_config, "pretrained", None):
        return {"config": to_dict(model_config)} | cls
    path = Path(workdir) / "model"
    model.save_checkpoint(path)
    return {"checkpoint": str(path)} | cls


def _load(model: str, source: dict[str, Any]):
    cls: type[SuiteModel]
    if "class" in source:
        module, _, attr = source["class"].partition(":")
        cls = check_model_class(getattr(importlib.import_module(module), attr), model)
    else:
        cls = MODELS.get(model)
    if "checkpoint" in source:
        loaded = cls.load_checkpoint(Path(source["checkpoint"]))
        if source.get("eval_only"):
            loaded.config = replace(loaded.config, **source["eval_only"])
        return loaded
    return cls.create(from_dict(cls.Config, source["config"], "model_args"), OptimConfig(), ())


def probe(model: str, source: dict[str, Any], inputs: str, device: str, threads: int, out: str) -> None:
    """The child's work (see the module docstring); writes its figures to ``out`` as JSON."""
    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    m = _load(model, source).to(device).eval()
    data = torch.load(inputs, weights_only=True)
    pixels, texts = data["pixels"].to(device), list(data["texts"])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        sync()
        t = time.perf_counter()
        m.encode_images(pixels)
        sync()
        cold = time.perf_counter() - t

    def step() -> None:
        with torch.inference_mode():
            m.score(m.encode_texts(texts), m.encode_images(pixels))

    gpu = gpu_peak_memory_mb(step, device) if cuda else None
    if not cuda:
        step()
    Path(out).write_text(
        json.dumps(
            {
                "cold_first_call_s": cold,
                "batch_size": len(pixels),
                "threads": torch.get_num_threads(),
                "gpu_allocated_mb": (gpu or {}).get("max_memory_allocated_mb"),
                "gpu_reserved_mb": (gpu or {}).get("max_memory_reserved_mb"),
            }
        )
    )


def run_probe(
    model: str,
    source: dict[str, Any],
    pixels,
    texts: list[str],
    *,
    device: str,
    threads: int,
    workdir: Path,
    timeout_s: float = 900,
) -> ProbeResult:
    """Run :func:`probe` in a fresh interpreter; its peak RSS and figures."""
    workdir = Path(workdir)
    inputs, out = workdir / "probe_inputs.pt", workdir / "probe_out.json"
    torch.save({"pixels": pixels.detach().cpu(), "texts": list(texts)}, inputs)
    rss = peak_rss_mb_in_fresh_process(
        TARGET,
        timeout_s=timeout_s,
        model=model,
        source=source,
        inputs=str(inputs),
        device=device,
        threads=threads,
        out=str(out),
    )
    d = json.loads(out.read_text())
    return ProbeResult(
        peak_rss_mb=rss,
        cold_first_call_s=d["cold_first_call_s"],
        gpu_allocated_mb=d["gpu_allocated_mb"],
        gpu_reserved_mb=d["gpu_reserved_mb"],
        batch_size=d["batch_size"],
        device=device,
        threads=d["threads"],
    )
