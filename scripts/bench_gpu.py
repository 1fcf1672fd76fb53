"""Full-size GPU cost of every model: image throughput and peak GPU memory (issue 6).

Random-init models at the real architectures, built through the suite's own full-size
loading path: a ``Blip2ForImageTextRetrieval`` with BLIP-2's default config (EVA ViT-g/14,
224 px, 39 layers; 12-layer Q-Former, 32 queries: the layout of
``Salesforce/blip2-itm-vit-g``) and a ``CLIPModel`` at ViT-L/14 are written with
``save_pretrained`` (with a tokenizer and an image processor, as on the hub) and loaded by
``MODELS.get(name).create(Config(pretrained=folder))`` -- the code that loads the real
checkpoints (the writers are shared with ``scripts/gpu_eval.py``: ``scripts/random_checkpoints.py``).
Models: ``clip`` (ViT-L/14), ``blip2``, ``ours`` (BLIP2-IDQ-Former: gallery
at ``L_max``, every instruction pinned to ``--ours-length``, by default the mean L measured
on the tiny benchmark, ``results/reference/ours__synthetic__default.json``), ``dynamicvit``
(keep rate 0.7) and ``crossget`` (r = 5, its full-size default), all four BLIP-2 models
from the same checkpoint.

Per model, alone on the device (the previous one freed; ``--rounds`` rounds of every model
in turn, throughputs reported as the median over the rounds), in ``--dtype`` weights, ``eval()``
and ``torch.inference_mode()``, on one fixed batch of ``--batch-size`` random images and as
many instructions:

* ``throughput_img_s``: ``encode_images`` (gallery indexing: vision tower + Q-Former), cold
  first call, warm-up, then the median (and p90) of >= ``--repeats`` timed calls and at
  least ``--min-time`` s, CUDA synchronized (:mod:`benchmark.measure.throughput`);
* ``step_img_s``: one retrieval step, ``score(encode_texts(texts), encode_images(images))``
  with ITM re-ranking of the top ``k_test`` (128 at full size: every image of the batch);
* ``memory_mb``: ``max_memory_allocated`` (and reserved) of a separate pass of that step,
  weights included (:func:`benchmark.measure.memory.gpu_peak_memory_mb`), and of
  ``encode_images`` alone. On a CPU there is no allocator peak: these are null.

Writes ``<out-dir>/gpu_costs.json`` (figures, settings, versions, device, seed, ratios to
BLIP2 and to the paper's RTX 4090 figures) and ``gpu_costs.md`` atomically. The paper's
figures come from another card (RTX 4090) and an unknown protocol: the side-by-side ratios
measured in this run are the comparison; the paper's are printed for context.

    python scripts/bench_gpu.py --device cuda --dtype float16 --batch-size 32 --out-dir results/gpu
    python scripts/bench_gpu.py --scale tiny --device cpu --dtype float32 --batch-size 2 --out-dir /tmp/gpu
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # its sibling modules, also when loaded by path (the tests)

from random_checkpoints import INSTRUCTIONS, SCALES, write_blip2, write_clip  # noqa: E402

from benchmark.atomic import atomic_write_text  # noqa: E402
from benchmark.config import from_dict  # noqa: E402
from benchmark.environment import environment  # noqa: E402
from benchmark.measure.memory import gpu_peak_memory_mb  # noqa: E402
from benchmark.measure.throughput import measure_throughput  # noqa: E402
from benchmark.registry import MODELS  # noqa: E402
from benchmark.reporting.escape import markdown_inline  # noqa: E402
from benchmark.results import atomic_write_json  # noqa: E402
from lightning_modules.optim import OptimConfig  # noqa: E402

#: the paper's Table (1x RTX 4090): memory (MB) and throughput (img/s)
PAPER = {
    "blip2": {"memory_mb": 7213, "throughput_img_s": 52.63},
    "paper_idq_former": {"memory_mb": 15149, "throughput_img_s": 29.41},
}


@dataclass(frozen=True)
class ModelSpec:
    checkpoint: str  # "blip2" or "clip"
    overrides: dict = field(default_factory=dict)


SPECS = {
    "clip": ModelSpec("clip"),
    "blip2": ModelSpec("blip2"),
    "ours": ModelSpec("blip2"),
    "dynamicvit": ModelSpec("blip2"),
    "crossget": ModelSpec("blip2"),
}


# -- models ------------------------------------------------------------------------------
def build(name: str, checkpoint: Path):
    """The registered model ``name`` at full size from ``checkpoint`` (the real loading path)."""
    cls = MODELS.get(name)
    config = from_dict(cls.Config, {"pretrained": str(checkpoint), **SPECS[name].overrides}, "model_args")
    return cls.create(config, OptimConfig(), ())


def pin_length(model, length: int) -> None:
    """Make ours' QScaler give every instruction exactly ``length`` queries (random init)."""
    lc = model.qscaler.length
    if not lc.l_base < length < lc.l_max:
        raise ValueError(f"--ours-length must lie strictly between L_base={lc.l_base} and L_max={lc.l_max}")
    r = (length - lc.l_base) / (lc.l_max - lc.l_base)
    last = model.qscaler.head.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(math.log(r / (1 - r)))


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def measure(model, pixels: torch.Tensor, texts: list[str], args: argparse.Namespace) -> dict:
    batch, device = len(pixels), args.device

    def encode() -> object:
        return model.encode_images(pixels)

    def step() -> object:
        return model.score(model.encode_texts(texts), model.encode_images(pixels))

    with torch.inference_mode():
        txt = model.encode_texts(texts)
    lengths = None if txt.lengths is None else [int(x) for x in txt.lengths.tolist()]
    out = {
        "query_lengths": None
        if lengths is None
        else {"mean": statistics.fmean(lengths), "min": min(lengths), "max": max(lengths)}
    }
    kw = dict(device=device, warmup=args.warmup, runs=args.repeats, min_time_s=args.min_time)
    out["encode_images"] = measure_throughput(encode, batch, **kw).to_dict()
    out["retrieval_step"] = measure_throughput(step, batch, **kw).to_dict()
    if device.startswith("cuda"):
        out["memory_encode_images"] = gpu_peak_memory_mb(encode, device)
        out["memory_retrieval_step"] = gpu_peak_memory_mb(step, device)
    else:
        out["memory_encode_images"] = out["memory_retrieval_step"] = None
    out["throughput_img_s"] = out["encode_images"]["items_per_s"]
    out["step_img_s"] = out["retrieval_step"]["items_per_s"]
    out["memory_mb"] = (out["memory_retrieval_step"] or {}).get("max_memory_allocated_mb")
    out["k_test"] = getattr(model.config, "k", None)
    return out


def run_model(
    name: str, checkpoint: Path, pixels_cpu: torch.Tensor, texts: list[str], args: argparse.Namespace
) -> dict:
    dtype = getattr(torch, args.dtype)
    t = time.perf_counter()
    model = build(name, checkpoint)
    load_s = time.perf_counter() - t
    if name == "ours" and args.ours_length is not None:
        pin_length(model, args.ours_length)
    model = model.to(device=args.device, dtype=dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    res = {"load_s": load_s, "parameters": params, **measure(model, pixels_cpu.to(args.device, dtype), texts, args)}
    if name == "ours":
        res["l_max"] = model.length.l_max
        if args.ours_length is not None and res["query_lengths"]["min"] != res["query_lengths"]["max"]:
            raise RuntimeError(f"ours was pinned to L={args.ours_length} but gave {res['query_lengths']}")
    del model
    _free(args.device)
    return res


def combine(per_round: list[dict]) -> dict:
    """One model's rounds: the first round's record, the throughputs replaced by their median
    over the rounds (each round's kept under ``rounds``); memory is deterministic per step."""
    out = dict(per_round[0])
    for key in ("throughput_img_s", "step_img_s"):
        out[key] = statistics.median(m[key] for m in per_round)
    out["rounds"] = [{k: m[k] for k in ("throughput_img_s", "step_img_s", "memory_mb", "load_s")} for m in per_round]
    return out


# -- report ------------------------------------------------------------------------------
def measured_mean_length(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text())["metrics"]["qlen/mean"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def summary_rows(models: dict) -> list[tuple]:
    base = models.get("blip2")
    rows = []
    for name, m in models.items():
        ratio = lambda k, m=m: f"{m[k] / base[k]:.2f}" if base and base.get(k) else "-"  # noqa: E731
        mem = "-" if m["memory_mb"] is None else f"{m['memory_mb']:.0f}"
        rows.append(
            (
                name,
                f"{m['throughput_img_s']:.1f}",
                ratio("throughput_img_s"),
                f"{m['step_img_s']:.1f}",
                ratio("step_img_s"),
                mem,
                "-" if m["memory_mb"] is None else ratio("memory_mb"),
            )
        )
    return rows


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [[markdown_inline(str(c)) for c in r] for r in (head, *rows)]
    return "\n".join(
        [
            "| " + " | ".join(cells[0]) + " |",
            "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in cells[1:]),
        ]
    )


def markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    head = ("model", "img/s (encode)", "x blip2", "img/s (retrieval step)", "x blip2", "memory MB (step)", "x blip2")
    lines = [
        "# Full-size cost on the GPU (random-init weights)",
        "",
        (
            f"Device: {env['cuda_device_name'] or env['device']}; dtype {s['dtype']}; batch {s['batch_size']}; "
            f"torch {env['packages'].get('torch')}, transformers {env['packages'].get('transformers')}; seed {s['seed']}; "
            f"img/s: median of {s['rounds']} rounds (every model once per round)."
        ),
        f"ours: gallery at L_max, every instruction pinned to L = {s['ours_length']} ({s['ours_length_source']}).",
        "",
        md_table(head, summary_rows(report["models"])),
        "",
        (
            "Paper (1x RTX 4090, another card and protocol): BLIP2 52.63 img/s, 7213 MB; the paper's "
            "IDQ-Former 29.41 img/s, 15149 MB."
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--models", default=",".join(SPECS))
    p.add_argument(
        "--ours-length",
        type=int,
        default=None,
        help="L of every instruction for ours (default: the rounded mean L of the reference run)",
    )
    p.add_argument("--reference", type=Path, default=ROOT / "results/reference/ours__synthetic__default.json")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3, help="every model measured once per round; medians reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--revision", default=None, help="git revision of the code (recorded)")
    p.add_argument("--workdir", type=Path, default=None, help="where the random checkpoints go (default: a temp dir)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results/gpu")
    args = p.parse_args(argv)
    unknown = sorted(set(args.models.split(",")) - set(SPECS))
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(SPECS)}")
    if args.batch_size < 1 or args.rounds < 1:
        p.error("--batch-size and --rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    scale = SCALES[args.scale]
    names = args.models.split(",")
    source = "given"
    if args.ours_length is None and "ours" in names:
        mean = measured_mean_length(args.reference)
        if mean is None:
            raise SystemExit(f"--ours-length not given and {args.reference} has no metrics.qlen/mean")
        args.ours_length, source = round(mean), f"round of qlen/mean {mean:.2f} in {args.reference.name}"
    torch.manual_seed(args.seed)
    size = scale.image_size
    pixels = torch.randn(args.batch_size, 3, size, size)
    texts = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.batch_size)]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        info, folders = {}, {"blip2": Path(tmp) / "blip2", "clip": Path(tmp) / "clip"}
        writers = {"blip2": write_blip2, "clip": write_clip}
        for name in names:
            ck = SPECS[name].checkpoint
            if ck not in info:
                t = time.perf_counter()
                info[ck] = writers[ck](folders[ck], scale, args.device)
                info[ck]["write_s"] = time.perf_counter() - t
                _free(args.device)
        rounds: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(args.rounds):  # every model once per round: drifts of the device hit all alike
            for name in names:
                m = run_model(name, folders[SPECS[name].checkpoint], pixels, texts, args)
                rounds[name].append(m)
                print(
                    f"[bench_gpu] round {r + 1}/{args.rounds} {name}: {m['throughput_img_s']:.1f} img/s encode, "
                    f"{m['step_img_s']:.1f} img/s step, memory {m['memory_mb']} MB, load {m['load_s']:.1f} s",
                    flush=True,
                )
        models = {name: combine(per) for name, per in rounds.items()}
    report = {
        "settings": {
            "scale": args.scale,
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "min_time_s": args.min_time,
            "rounds": args.rounds,
            "ours_length": args.ours_length,
            "ours_length_source": source,
            "revision": args.revision,
            "weights": "random init (seed 0), written with save_pretrained and loaded through the "
            "models' full-size path",
        },
        "checkpoints": info,
        "environment": environment(args.device),
        "paper_rtx4090": PAPER,
        "models": models,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / "gpu_costs.json", report)
    atomic_write_text(args.out_dir / "gpu_costs.md", markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
