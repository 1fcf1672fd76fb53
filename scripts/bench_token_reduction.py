"""Vision-encoder cost of the token-reduction towers against the unpruned encoder.

Encoders (``--encoder``, a registry of presets; random weights unless a tiny checkpoint is
cached, seed 0), each with the CrossGET ``r`` it is run at unless ``--r`` says otherwise:

* ``tiny`` (default): the suite's tiny CLIP vision encoder (48 px, patch 8 -> 36 patches +
  CLS, width 128, 4 layers, 4 heads, MLP ratio 2; random weights, or the vision tower of a
  cached tiny CLIP checkpoint), r = 6 (the component's default);
* ``vit-b``: a ``Blip2VisionModel`` at ViT-B/16 shapes (224 px, patch 16 -> 196 patches,
  width 768, 12 layers, 12 heads, MLP 3072), r = 16 (CrossGET's ViT-B/16 setting);
* ``vit-g``: a ``Blip2VisionModel`` with BLIP-2's default (EVA ViT-g/14, 224 px, 39 layers)
  config, r = 5 (the full-size default of ``--model crossget``); ``--depth`` cuts the layers
  (e.g. for a CPU).

All as the BLIP2 family uses them (all tokens through the post-layernorm). Models compared:

* ``unpruned``: :class:`ViTRunner` with no hooks (equals the transformers forward);
* ``dynamicvit``: :class:`DynamicViTTower` at ``--keep-rate`` (inference: real removal);
* ``crossget``: :class:`CrossGETTower` at ``r`` (constant merges per layer).

FLOPs per image: fvcore multiply-adds (:func:`benchmark.measure.flops.count_flops`, with
the sdpa/baddbmm handles), mean and std over ``--flop-batches`` random batches. Operator
dispatches per forward (``ops``; ``kernels``: those that are not views): where a device
runs faster than the host can issue work (a GPU at small per-layer work, or a tiny model on
a CPU) the forward is bound by them rather than by FLOPs. Wall time: ``eval()``,
``torch.inference_mode()``, fixed threads, per batch size a cold first call, warm-up, then
``--repeats`` rounds in which every model runs once, in an order that rotates from round to
round (so load from other processes and cache effects hit all models alike; CUDA
synchronized around each call). Per model: median, min and max of the call time; images/s
from the median; the time ratio to ``unpruned`` is taken within each round, reported as
the median and the range over the rounds; beside it the ratio of the fastest calls and
the per-round ratio of process CPU time (both less disturbed by other processes' load).
``--check`` first compares keep rate 1.0 / r = 0 with the transformers forward in fp32.
``--json`` writes everything atomically. On a loaded 2-core machine use ``--threads 1``:
with 2 threads, OpenMP barriers waiting on a descheduled thread swamp the measurement.

    python scripts/bench_token_reduction.py --threads 2 --batch-sizes 32 128
    python scripts/bench_token_reduction.py --encoder vit-b --threads 1 --batch-sizes 8 --repeats 6 \
        --warmup 1 --flop-batches 1 --flop-batch-size 2 --json out.json
    python scripts/bench_token_reduction.py --encoder vit-g --device cuda --dtype float16 \
        --no-flops --check --batch-sizes 32 128 [--cuda-graphs]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Blip2VisionConfig, Blip2VisionModel, CLIPVisionConfig, CLIPVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transformers
from transformers import CLIPModel

from benchmark.atomic import atomic_write_json
from benchmark.config import ConfigError, build_run_config, model_defaults
from benchmark.measure.flops import count_flops
from benchmark.store import ensure_checkpoint
from lightning_modules.components.crossget import DEFAULT_R, CrossGETTower
from lightning_modules.components.dynamicvit import DEFAULT_KEEP_RATE, DynamicViTTower
from lightning_modules.components.vit_runner import ViTRunner

#: CrossGET's full-size r on BLIP-2's ViT-g/14 (lightning_modules.crossget_model.FULL_R)
VIT_G_R = 5
#: CrossGET's r for ViT-B/16 (Shi et al., 2024: ~58% of the GFLOPs)
VIT_B_R = 16


@dataclass(frozen=True)
class EncoderPreset:
    """How to build one benchmark encoder, and the CrossGET r it runs at by default."""

    build: Callable[[str, int | None, str | None], tuple[torch.nn.Module, str]]
    r: int
    r_source: str


def _tiny(device: str, depth: int | None, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    if checkpoint:
        return CLIPModel.from_pretrained(checkpoint, local_files_only=True).vision_model.to(device).eval(), checkpoint
    cfg = CLIPVisionConfig(
        image_size=48,
        patch_size=8,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=depth or 4,
        num_attention_heads=4,
    )
    return CLIPVisionModel(cfg).to(device).eval(), f"tiny CLIP vision, {cfg.num_hidden_layers} layers, random weights"


def _blip2_vision(cfg: Blip2VisionConfig, device: str, what: str) -> tuple[torch.nn.Module, str]:
    with torch.device(device):
        model = Blip2VisionModel(cfg)
    return model.eval(), f"random Blip2VisionModel, {what}, {cfg.num_hidden_layers} layers, {cfg.image_size} px"


def _vit_b(device: str, depth: int | None, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    cfg = Blip2VisionConfig(
        image_size=224,
        patch_size=16,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=depth or 12,
        num_attention_heads=12,
        initializer_range=0.02,
    )
    return _blip2_vision(cfg, device, "ViT-B/16 shapes")


def _vit_g(device: str, depth: int | None, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    cfg = Blip2VisionConfig(initializer_range=0.02)
    if depth:
        cfg.num_hidden_layers = depth
    return _blip2_vision(cfg, device, "BLIP-2 default config (ViT-g/14)")


ENCODERS: dict[str, EncoderPreset] = {
    "tiny": EncoderPreset(_tiny, DEFAULT_R, "crossget.DEFAULT_R (tiny tower)"),
    "vit-b": EncoderPreset(_vit_b, VIT_B_R, "CrossGET paper, ViT-B/16"),
    "vit-g": EncoderPreset(_vit_g, VIT_G_R, "crossget_model.FULL_R (BLIP-2 ViT-g/14)"),
}


def hf_tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x).last_hidden_state
    return model.post_layernorm(out) if isinstance(model, CLIPVisionModel) else out


def default_checkpoint() -> str | None:
    """The tiny CLIP checkpoint ``bench run --model clip`` uses (the shipped base config, found by
    its training hash in the suite's cache); None when it is not trained yet."""
    cfg = build_run_config(model_defaults("clip"), {"model": "clip", "dataset": "synthetic", "size": "tiny"})
    try:
        return str(ensure_checkpoint(cfg, train=False)[0])
    except ConfigError:
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        self.kernels += not func.is_view
        return func(*args, **(kwargs or {}))


def count_ops(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Operator dispatches of one inference forward in the steady state (after a first call,
    which may build cached constants; ``kernels``: those that are not views)."""
    with torch.inference_mode():
        model(x)
        with _CountOps() as counter:
            model(x)
    return {"ops": sum(counter.ops.values()), "kernels": counter.kernels}


class CudaGraphed:
    """A model's forward captured once as a CUDA graph for a fixed input shape (the token
    counts of both towers are static for a fixed batch), so timing sees the kernels, not
    the Python/launch overhead of many small ops. Replays overwrite the returned tensor."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor) -> None:
        with torch.inference_mode():
            self.x = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(self.x)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = model(self.x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.graph.replay()
        return self.out


def _timed(model, x: torch.Tensor) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    _sync(str(x.device))
    t0, c0 = time.perf_counter(), time.process_time()
    model(x)
    _sync(str(x.device))
    return time.perf_counter() - t0, time.process_time() - c0


def _ratio_stats(times: list[float], base: list[float], prefix: str) -> dict[str, float]:
    ratios = [t / b for t, b in zip(times, base, strict=True)]
    return {f"{prefix}_median": statistics.median(ratios), f"{prefix}_min": min(ratios), f"{prefix}_max": max(ratios)}


def time_models(
    models: dict[str, torch.nn.Module], x: torch.Tensor, warmup: int, repeats: int, baseline: str = "unpruned"
) -> dict[str, dict]:
    """Cold call, ``warmup`` untimed rounds, then ``repeats`` rounds of one call per model, the
    order rotating by one model per round; per-round time ratios to ``baseline`` (wall time,
    and process CPU time, which load from other processes disturbs less), and the ratio of
    the fastest calls (the least disturbed ones)."""
    names, batch = list(models), x.shape[0]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    out: dict[str, dict] = {}
    with torch.inference_mode():
        for name in names:
            out[name] = {"cold_s": _timed(models[name], x)[0]}
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for round_ in range(repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                w, c = _timed(models[name], x)
                wall[name].append(w)
                cpu[name].append(c)
    for name in names:
        ts = wall[name]
        out[name] |= {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "images_per_s": batch / statistics.median(ts),
            **_ratio_stats(ts, wall[baseline], "time_ratio"),
            "fastest_ratio": min(ts) / min(wall[baseline]),
            "cpu_median_s": statistics.median(cpu[name]),
            **_ratio_stats(cpu[name], cpu[baseline], "cpu_ratio"),
            "times_s": ts,
            "cpu_times_s": cpu[name],
        }
    return out


@torch.no_grad()
def check_equal(encoder: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Max |difference| to the transformers forward (fp32, TF32 off) of the reduction-free settings."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ref = hf_tokens(encoder, x)
    out = {
        "runner": ViTRunner(encoder)(x),
        "dynamicvit keep 1.0": DynamicViTTower(encoder, keep_rate=1.0).to(x.device).eval()(x),
        "crossget r 0": CrossGETTower(encoder, r=0).to(x.device).eval()(x),
    }
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diffs = {k: float((v - ref).abs().max()) for k, v in out.items()}
    diffs["reference max |x|"] = float(ref.abs().max())
    return diffs


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", choices=sorted(ENCODERS), default="tiny")
    ap.add_argument(
        "--depth",
        type=_positive,
        default=None,
        help="number of layers of a randomly built encoder (default: the preset's)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="fixed intra-op threads (1: on a shared 2-core box, 2 threads spin on each other)",
    )
    ap.add_argument("--batch-sizes", type=_positive, nargs="*", default=[32, 128], help="none: FLOPs only")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=_positive, default=30, help="timed rounds (every model once per round)")
    ap.add_argument("--flop-batches", type=_positive, default=3)
    ap.add_argument("--flop-batch-size", type=_positive, default=4)
    ap.add_argument("--no-flops", action="store_true", help="skip fvcore (e.g. where it is not installed)")
    ap.add_argument("--check", action="store_true", help="first check keep 1.0 / r 0 against transformers")
    ap.add_argument("--keep-rate", type=float, default=DEFAULT_KEEP_RATE)
    ap.add_argument("--r", type=int, default=None, help="CrossGET merges per layer (default: the encoder preset's)")
    ap.add_argument("--checkpoint", default=None, help="a tiny CLIP checkpoint dir (default: newest cached, if any)")
    ap.add_argument("--random", action="store_true", help="random weights even if a checkpoint is cached")
    ap.add_argument("--cuda-graphs", action="store_true", help="time every model as a captured CUDA graph")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here (atomically)")
    args = ap.parse_args(argv)
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    if not 0.0 < args.keep_rate <= 1.0:  # also refuses NaN
        ap.error(f"--keep-rate must be in (0, 1], got {args.keep_rate}")
    if args.r is not None and args.r < 0:
        ap.error(f"--r must be >= 0, got {args.r}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = ENCODERS[args.encoder]
    r = preset.r if args.r is None else args.r
    checkpoint = None if args.random or args.encoder != "tiny" else (args.checkpoint or default_checkpoint())
    encoder, source = preset.build(args.device, args.depth, checkpoint)
    size = encoder.config.image_size
    dtype = getattr(torch, args.dtype)

    print(f"encoder: {source}; {args.device}, {args.dtype}")
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()}"
    )
    if args.device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name()}")
    result: dict = {
        "encoder": args.encoder,
        "source": source,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "torch": torch.__version__,
        "keep_rate": args.keep_rate,
        "r": r,
        "r_source": preset.r_source if args.r is None else "--r",
        "cuda_graphs": args.cuda_graphs,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    if args.check:
        torch.manual_seed(7)
        result["check_max_abs_diff"] = check_equal(encoder, torch.randn(2, 3, size, size, device=args.device))
        print("max |difference| to the transformers forward (fp32):", result["check_max_abs_diff"])

    encoder.to(dtype)
    dvit = DynamicViTTower(encoder, keep_rate=args.keep_rate).to(args.device, dtype).eval()
    cget = CrossGETTower(encoder, r=r).to(args.device, dtype).eval()
    models = {"unpruned": ViTRunner(encoder).eval(), "dynamicvit": dvit, "crossget": cget}
    print(
        f"dynamicvit: keep_rate {args.keep_rate}, pruning before layers {dvit.pruning_layers}, "
        f"patches kept {dvit.keep_counts}, tokens per layer {dvit.tokens_per_layer()}"
    )
    print(
        f"crossget:   r {r} ({result['r_source']}), guidance {cget.guidance}, tokens per layer "
        f"{cget.tokens_per_layer()} (+1 cross token), output tokens {cget.output_tokens()}"
    )
    result["tokens_per_layer"] = {"dynamicvit": dvit.tokens_per_layer(), "crossget": cget.tokens_per_layer()}

    x = torch.randn(1, 3, size, size, device=args.device, dtype=dtype)
    result["ops_per_forward"] = {name: count_ops(model, x) for name, model in models.items()}
    print(
        "operator dispatches per forward (kernels: not views): "
        + ", ".join(f"{k} {v['ops']} ({v['kernels']})" for k, v in result["ops_per_forward"].items())
    )

    flops: dict[str, dict] = {}
    if not args.no_flops:
        for name, model in models.items():
            per_image = []
            for seed in range(args.flop_batches):
                torch.manual_seed(100 + seed)
                x = torch.randn(args.flop_batch_size, 3, size, size, device=args.device, dtype=dtype)
                per_image.append(count_flops(model, x).total / args.flop_batch_size / 1e9)
            flops[name] = {"gflops_mean": statistics.mean(per_image), "gflops_std": statistics.pstdev(per_image)}
        base = flops["unpruned"]["gflops_mean"]
        for f in flops.values():
            f["ratio"] = f["gflops_mean"] / base
        print(
            f"\nFLOPs per image (fvcore, multiply-adds), mean +- std over {args.flop_batches} random batches "
            f"of {args.flop_batch_size}"
        )
        for name, f in flops.items():
            print(f"  {name:<11} {f['gflops_mean']:10.4f} GFLOPs +- {f['gflops_std']:.4f}   ratio {f['ratio']:.3f}")
        result["flops"] = flops

    timing = {}
    for batch in args.batch_sizes:
        torch.manual_seed(batch)
        x = torch.randn(batch, 3, size, size, device=args.device, dtype=dtype)
        timed = {k: CudaGraphed(m, x) for k, m in models.items()} if args.cuda_graphs else models
        load = os.getloadavg()
        timing[batch] = time_models(timed, x, args.warmup, args.repeats)
        print(
            f"\nwall time{' (CUDA graphs)' if args.cuda_graphs else ''}, batch {batch}, threads {args.threads}, "
            f"{args.repeats} rotating rounds after {args.warmup} warm-up (load average before {load}, "
            f"after {os.getloadavg()})"
        )
        print(
            f"  {'model':<11} {'cold ms':>8} {'median ms':>10} {'min-max ms':>17} {'img/s':>7} "
            f"{'time ratio [range]':>22} {'fastest':>8} {'CPU-time ratio [range]':>23} {'FLOP ratio':>10}"
        )
        for name, t in timing[batch].items():
            ratio = f"{flops[name]['ratio']:10.3f}" if flops else f"{'-':>10}"
            spread = f"{t['min_s'] * 1e3:.1f}-{t['max_s'] * 1e3:.1f}"
            tr = f"{t['time_ratio_median']:.3f} [{t['time_ratio_min']:.3f}, {t['time_ratio_max']:.3f}]"
            cr = f"{t['cpu_ratio_median']:.3f} [{t['cpu_ratio_min']:.3f}, {t['cpu_ratio_max']:.3f}]"
            print(
                f"  {name:<11} {t['cold_s'] * 1e3:8.1f} {t['median_s'] * 1e3:10.2f} {spread:>17} "
                f"{t['images_per_s']:7.1f} {tr:>22} {t['fastest_ratio']:8.3f} {cr:>23} {ratio}"
            )
    result["timing"] = {str(b): t for b, t in timing.items()}
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
