"""The steps of ``scripts/gpu_train_check.sh``: full-shape training steps on one GPU (issue 25, item 7).

Three subcommands, each run in its own process by the shell script:

* ``prepare``: writes a random-weight ``Blip2ForImageTextRetrieval`` at the layout of
  ``Salesforce/blip2-itm-vit-g`` and a random ``CLIPModel`` at ViT-L/14 (``--scale full``; tiny
  shapes with ``--scale tiny``) with ``scripts/random_checkpoints.py``, once, into ``--work``;
  every model's step then loads them through its own full-size path (``model_args.pretrained``).
* ``model``: one model, in this process, without then with ``train.grad_checkpointing``: for each
  setting the model is built from the checkpoint, trained by a Lightning ``Trainer`` (the suite's
  real ``training_step`` / ``configure_optimizers``; ``precision="bf16-mixed"``, i.e. autocast,
  gradient clipping 1.0 as the runner trains) for ``--warmup`` + ``--steps`` optimizer steps at
  ``--batch``; the median of the timed steps (CUDA synchronised before and after each) gives
  steps/s, and ``torch.cuda.max_memory_allocated`` (reset before the setting, after the previous
  model was freed) its peak memory. Written to ``<out>/runs/<model>.json`` after each setting.
* ``summary``: ``<out>/summary.md`` and ``summary.json``: one row per (model, setting) and the
  targets PASS/FAIL: every model trains at the batch size within ``--limit-gb`` (default 80 GB =
  80e9 bytes; with or without checkpointing), and ours' peak is within ``--ratio`` (1.1) x BLIP2's
  (same setting).

Inputs, as the runner feeds each model at full size: BLIP2 and ours train on cached frozen
vision features (``cache_features`` is their default), so their batches are random fp16 tokens
of the tower's output shape (``[B, 257, 1408]`` at ViT-g/14, 224 px: the feature cache's fp16
storage); CLIP, DynamicViT and CrossGET need pixels: random ``[B, 3, 224, 224]`` float32. Each
batch also has the index column (distinct images) and the relevance column of
``collate_indexed``; texts are two of the written tokenizer's instructions joined (up to the
models' text length). The vision tower is part of each model and is on the GPU, as in a run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from gpu_records import read_json, write_json  # noqa: E402
from random_checkpoints import (  # noqa: E402
    INSTRUCTIONS,
    SCALES,
    folder_bytes,
    write_blip2,
    write_clip,
)
from torch.utils.data import DataLoader  # noqa: E402

from benchmark.atomic import atomic_write_text  # noqa: E402
from benchmark.config import from_dict  # noqa: E402
from benchmark.registry import MODELS as REGISTRY  # noqa: E402
from datamodules.batch import TrainBatch  # noqa: E402
from lightning_modules.components.vit_runner import unwrap_vision_model  # noqa: E402
from lightning_modules.grad_checkpointing import enable_grad_checkpointing  # noqa: E402
from lightning_modules.optim import OptimConfig  # noqa: E402

#: models of the check, in order; which checkpoint each starts from and what its batches hold
MODELS = {
    "clip": ("clip", "pixels"),
    "blip2": ("blip2", "tokens"),
    "ours": ("blip2", "tokens"),
    "dynamicvit": ("blip2", "pixels"),
    "crossget": ("blip2", "pixels"),
}
SETTINGS = ((False, "off"), (True, "on"))
LIMIT_GB = 80.0
OURS_RATIO = 1.1


# -- prepare ------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work, scale = Path(args.work), SCALES[args.scale]
    record: dict = {"scale": args.scale, "device": device}
    for name, write in (("blip2", write_blip2), ("clip", write_clip)):
        t = time.perf_counter()
        info = write(work / name, scale, device)
        record[name] = info | {
            "path": str(work / name),
            "bytes": folder_bytes(work / name),
            "write_s": time.perf_counter() - t,
        }
        print(
            f"[gpu_train] {name}: {info['parameters'] / 1e6:.1f} M parameters, "
            f"{record[name]['bytes'] / 1e9:.2f} GB in {record[name]['write_s']:.1f} s",
            flush=True,
        )
    write_json(Path(args.out) / "prepare.json", record)
    return record


# -- one model ----------------------------------------------------------------------------
def texts(batch: int) -> list[str]:
    """``batch`` instructions from the written tokenizer's vocabulary (two joined: varied lengths)."""
    n = len(INSTRUCTIONS)
    return [f"{INSTRUCTIONS[i % n]} and {INSTRUCTIONS[(3 * i + 1) % n]}" for i in range(batch)]


class RandomBatches:
    """``count`` training batches (:class:`~datamodules.batch.TrainBatch`) as the DataModule's loader gives them."""

    def __init__(self, count: int, batch: int, image_shape: tuple[int, ...], dtype) -> None:
        self.count, self.batch, self.image_shape, self.dtype = count, batch, image_shape, dtype

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        if i >= self.count:
            raise IndexError(i)
        gen = torch.Generator().manual_seed(i)
        index = torch.arange(self.batch) + i * self.batch
        images = torch.randn((self.batch, *self.image_shape), generator=gen).to(self.dtype)
        return TrainBatch(index, images, texts(self.batch), index[:, None].clone())


def build(name: str, work: Path):
    cls = REGISTRY.get(name)
    config = from_dict(cls.Config, {"pretrained": str(work / MODELS[name][0])}, "model_args")
    return cls.create(config, OptimConfig(), list(INSTRUCTIONS))


def image_shape(model, kind: str, image_size: int) -> tuple[int, ...]:
    """Pixels ``(3, S, S)``, or the frozen tower's token shape ``(N, D)`` (what the feature cache holds)."""
    if kind == "pixels":
        return (3, image_size, image_size)
    vision = unwrap_vision_model(model.vision_tower)
    return (vision.embeddings.num_patches + 1, model.vision_tower.hidden_size)


def _timer():
    class StepTimer(L.Callback):
        """Wall time of each training batch (forward, backward, optimizer step), CUDA synchronised."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def _sync(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._sync()
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._sync()
            self.times.append(time.perf_counter() - self._t0)

    return StepTimer()


def run_setting(name: str, checkpointing: bool, args: argparse.Namespace) -> dict:
    """One (model, checkpointing) case; the model is freed before it returns."""
    cuda = args.device == "cuda"
    kind = MODELS[name][1]
    record: dict = {
        "model": name,
        "grad_checkpointing": checkpointing,
        "batch": args.batch,
        "inputs": kind,
        "precision": args.precision,
        "status": "ok",
        "error": None,
    }
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        record["allocated_before_mb"] = torch.cuda.memory_allocated() / 2**20
    model = trainer = None
    try:
        t = time.perf_counter()
        torch.manual_seed(0)
        model = build(name, Path(args.work))
        record["load_s"] = time.perf_counter() - t
        shape = image_shape(model, kind, args.image_size)
        dtype = torch.float16 if kind == "tokens" else torch.float32
        record["input_shape"] = [args.batch, *shape]
        record["input_dtype"] = str(dtype).replace("torch.", "")
        if checkpointing:
            enable_grad_checkpointing(model, name)
        timer = _timer()
        steps = args.warmup + args.steps
        loader = DataLoader(RandomBatches(steps, args.batch, shape, dtype), batch_size=None, shuffle=False)
        trainer = L.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision=args.precision,
            max_steps=steps,
            gradient_clip_val=1.0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[timer],
        )
        t = time.perf_counter()
        trainer.fit(model, train_dataloaders=loader)
        record["fit_s"] = time.perf_counter() - t
        timed = timer.times[args.warmup :]
        record["step_times_s"] = timer.times
        if len(timer.times) != steps or not timed:
            raise RuntimeError(f"{len(timer.times)} training steps ran, {steps} expected")
        record["median_step_s"] = statistics.median(timed)
        record["steps_per_s"] = 1.0 / record["median_step_s"]
        record["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    except Exception as e:  # an OOM or a crash: recorded, the next case goes on  # noqa: BLE001
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)
        record["status"] = "oom" if oom else "error"
        record["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()[-2000:]
        traceback.print_exc()
    if cuda:
        record["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        record["peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        record["device_name"] = torch.cuda.get_device_name()
    else:
        record["peak_allocated_mb"] = record["peak_reserved_mb"] = None
    del model, trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record


def run_model(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    doc: dict = {
        "model": args.name,
        "settings": [],
        "peak_memory_method": "torch.cuda.max_memory_allocated over the case (model built, moved to the "
        "GPU, warm-up and timed steps, optimizer state included), reset after the "
        "previous case's model was freed; PyTorch's caching allocator, without the "
        "CUDA context",
        "timing_method": f"median of {args.steps} timed training steps after {args.warmup} warm-up steps, "
        "each from on_train_batch_start to on_train_batch_end (forward, backward, "
        "gradient clipping, optimizer step), torch.cuda.synchronize() at both ends",
    }
    for checkpointing, label in SETTINGS:
        record = run_setting(args.name, checkpointing, args)
        doc["settings"].append(record)
        write_json(out / "runs" / f"{args.name}.json", doc)
        peak = record["peak_allocated_mb"]
        print(
            f"[gpu_train] {args.name} grad_checkpointing={label}: {record['status']}, "
            f"{record.get('steps_per_s', float('nan')):.2f} steps/s, peak allocated "
            f"{'n/a' if peak is None else f'{peak / 1024:.2f} GiB'}",
            flush=True,
        )
    return doc


# -- summary ------------------------------------------------------------------------------
def _gb(mb: float | None) -> float | None:
    return None if mb is None else mb * 2**20 / 1e9


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    order = [m for m in args.order.split(",") if m]
    runs = {m: read_json(out / "runs" / f"{m}.json") for m in order}
    rows, per_model = [], {}
    for m in order:
        settings = (runs[m] or {}).get("settings", [])
        for s in settings:
            rows.append(
                {
                    "model": m,
                    "grad_checkpointing": "on" if s["grad_checkpointing"] else "off",
                    "status": s["status"],
                    "inputs": f"{s.get('input_dtype', '?')} {s.get('input_shape', '?')}",
                    "peak_gb": _gb(s.get("peak_allocated_mb")),
                    "steps_per_s": s.get("steps_per_s"),
                    "median_step_s": s.get("median_step_s"),
                    "error": s.get("error"),
                }
            )
        per_model[m] = {s["grad_checkpointing"]: s for s in settings}
    measured = args.device_label is not None and "CPU" not in args.device_label

    def fits(m: str) -> str:
        ok = [s for s in per_model.get(m, {}).values() if s["status"] == "ok"]
        if not ok:
            return "FAIL (no setting trained)" if per_model.get(m) else "FAIL (not run)"
        peaks = [_gb(s["peak_allocated_mb"]) for s in ok]
        if any(p is None for p in peaks):
            return "n/a (no CUDA: memory not measured)"
        best = min(peaks)
        return f"{'PASS' if best <= args.limit_gb else 'FAIL'} ({best:.1f} GB at best)"

    targets = {f"{m} trains at batch {args.batch} within {args.limit_gb:g} GB": fits(m) for m in order}
    for label, flag in (("off", False), ("on", True)):
        ours, blip2 = per_model.get("ours", {}).get(flag), per_model.get("blip2", {}).get(flag)
        key = f"ours' peak memory <= {args.ratio:g} x BLIP2's (grad_checkpointing {label})"
        if not ours or not blip2 or ours["status"] != "ok" or blip2["status"] != "ok":
            targets[key] = "FAIL (not both trained)" if ours or blip2 else "n/a (not run)"
        elif ours["peak_allocated_mb"] is None or blip2["peak_allocated_mb"] is None:
            targets[key] = "n/a (no CUDA: memory not measured)"
        else:
            ratio = ours["peak_allocated_mb"] / blip2["peak_allocated_mb"]
            targets[key] = f"{'PASS' if ratio <= args.ratio else 'FAIL'} ({ratio:.3f}x)"
    doc = {
        "device": args.device_label,
        "batch": args.batch,
        "precision": args.precision,
        "rows": rows,
        "targets": targets,
        "measured_on_gpu": measured,
        "prepare": read_json(out / "prepare.json"),
    }
    lines = [
        f"# Full-shape training step per model ({args.device_label})",
        "",
        (
            f"Batch {args.batch}, precision {args.precision} (autocast), AdamW over each model's trainable "
            "parameters through its own `configure_optimizers`; steps/s = 1 / median timed step; peak = "
            "`torch.cuda.max_memory_allocated` per case (GB = 1e9 bytes)."
        ),
        "",
        "| model | grad checkpointing | inputs | status | peak GB | steps/s | median step s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['grad_checkpointing']} | {r['inputs']} | {r['status']} | "
            f"{_fmt(r['peak_gb'])} | {_fmt(r['steps_per_s'])} | {_fmt(r['median_step_s'], 3)} |"
        )
    lines += ["", "## Targets", ""] + [f"- {k}: **{v}**" for k, v in targets.items()]
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [
            f"- {r['model']} ({r['grad_checkpointing']}): `{r['error'][:300]}`" for r in errors
        ]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    write_json(out / "summary.json", doc)
    return doc


# -- command line -------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prepare")
    pre.add_argument("--scale", choices=("full", "tiny"), default="full")
    pre.add_argument("--work", required=True)
    pre.add_argument("--out", required=True)
    pre.add_argument("--device", choices=("cuda", "cpu"), default=None)
    mod = sub.add_parser("model")
    mod.add_argument("--name", choices=sorted(MODELS), required=True)
    mod.add_argument("--work", required=True)
    mod.add_argument("--out", required=True)
    mod.add_argument("--device", choices=("cuda", "cpu"), required=True)
    mod.add_argument("--image-size", type=int, required=True)
    mod.add_argument("--batch", type=int, default=32)
    mod.add_argument("--warmup", type=int, default=3)
    mod.add_argument("--steps", type=int, default=10)
    mod.add_argument("--precision", default="bf16-mixed")
    summ = sub.add_parser("summary")
    summ.add_argument("--out", required=True)
    summ.add_argument("--order", default=",".join(MODELS))
    summ.add_argument("--device-label", default=None)
    summ.add_argument("--batch", type=int, default=32)
    summ.add_argument("--precision", default="bf16-mixed")
    summ.add_argument("--limit-gb", type=float, default=LIMIT_GB)
    summ.add_argument("--ratio", type=float, default=OURS_RATIO)
    args = p.parse_args(argv)
    for name in ("batch", "warmup", "steps", "image_size"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "prepare":
        prepare(args)
    elif args.command == "model":
        run_model(args)
    else:
        summary(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
