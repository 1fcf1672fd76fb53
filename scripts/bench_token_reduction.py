"""Vision-encoder cost of the token-reduction towers against the unpruned encoder.

Default (``--encoder tiny``): the tiny CLIP vision encoder of the suite (48 px, patch 8 ->
36 patches + CLS, width 128, 4 layers, 4 heads, MLP ratio 2; random weights, or the vision
tower of a cached tiny CLIP checkpoint), as the BLIP2 family uses it (all tokens through
the post-layernorm). ``--encoder vit-g``: a random ``Blip2VisionModel`` with BLIP-2's
default (EVA ViT-g/14, 224 px, 39 layers) config, for GPU timing. Models compared:

* ``unpruned``: :class:`ViTRunner` with no hooks (equals the transformers forward);
* ``dynamicvit``: :class:`DynamicViTTower` at ``--keep-rate`` (inference: real removal);
* ``crossget``: :class:`CrossGETTower` at ``--r`` (constant merges per layer).

FLOPs per image: fvcore multiply-adds (:func:`benchmark.measure.flops.count_flops`, with
the sdpa/baddbmm handles), mean and std over ``--flop-batches`` random batches. Wall time:
``eval()``, ``torch.inference_mode()``, fixed threads, per batch size a cold first call,
then warm-up, then ``--repeats`` timed calls per model interleaved round-robin (so load
from other processes hits all models alike; CUDA synchronized around each call); median
and p90 per call, images/s from the median. Ratios are against ``unpruned``, side by side.
``--check`` first compares keep rate 1.0 / r = 0 with the transformers forward in fp32.

    python scripts/bench_token_reduction.py --threads 1 --batch-sizes 32 128
    python scripts/bench_token_reduction.py --encoder vit-g --device cuda --dtype bfloat16 \
        --no-flops --check --r 4 --batch-sizes 32 128
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from transformers import Blip2VisionConfig, Blip2VisionModel, CLIPVisionConfig, CLIPVisionModel

from lightning_modules.components.crossget import DEFAULT_R, CrossGETTower
from lightning_modules.components.dynamicvit import DEFAULT_KEEP_RATE, DynamicViTTower
from lightning_modules.components.vit_runner import ViTRunner


def build_encoder(kind: str, checkpoint: str | None, device: str) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if kind == "vit-g":
        with torch.device(device):
            model = Blip2VisionModel(Blip2VisionConfig(initializer_range=0.02))
        return model.eval(), "random Blip2VisionModel, BLIP-2 default config (ViT-g/14, 224 px, seed 0)"
    if checkpoint:
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(checkpoint, local_files_only=True).vision_model.to(device).eval(), checkpoint
    cfg = CLIPVisionConfig(image_size=48, patch_size=8, hidden_size=128, intermediate_size=256,
                           num_hidden_layers=4, num_attention_heads=4)
    return CLIPVisionModel(cfg).to(device).eval(), "tiny CLIP vision, random weights (seed 0)"


def hf_tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x).last_hidden_state
    return model.post_layernorm(out) if isinstance(model, CLIPVisionModel) else out


def default_checkpoint() -> str | None:
    cache = Path(os.environ.get("INSTRUCTSEE_CACHE", Path.home() / ".cache" / "instructsee-bench"))
    found = sorted(glob.glob(str(cache / "checkpoints" / "clip__synthetic__tiny__*")))
    return found[-1] if found else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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


def time_models(models: dict[str, torch.nn.Module], x: torch.Tensor, warmup: int, repeats: int) -> dict[str, dict]:
    device, batch = str(x.device), x.shape[0]
    out: dict[str, dict] = {name: {"times": []} for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            out[name]["cold_s"] = time.perf_counter() - t0
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                out[name]["times"].append(time.perf_counter() - t0)
    for stats in out.values():
        times = sorted(stats.pop("times"))
        stats["median_s"] = statistics.median(times)
        stats["p90_s"] = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
        stats["images_per_s"] = batch / stats["median_s"]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", choices=["tiny", "vit-g"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--threads", type=int, default=1,
                    help="fixed intra-op threads (1: on a shared 2-core box, 2 threads spin on each other)")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128], help="none: FLOPs only")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--flop-batches", type=int, default=3)
    ap.add_argument("--flop-batch-size", type=int, default=4)
    ap.add_argument("--no-flops", action="store_true", help="skip fvcore (e.g. where it is not installed)")
    ap.add_argument("--check", action="store_true", help="first check keep 1.0 / r 0 against transformers")
    ap.add_argument("--keep-rate", type=float, default=DEFAULT_KEEP_RATE)
    ap.add_argument("--r", type=int, default=DEFAULT_R)
    ap.add_argument("--checkpoint", default=None, help="a tiny CLIP checkpoint dir (default: newest cached, if any)")
    ap.add_argument("--random", action="store_true", help="random weights even if a checkpoint is cached")
    ap.add_argument("--cuda-graphs", action="store_true", help="time every model as a captured CUDA graph")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    checkpoint = None if args.random or args.encoder != "tiny" else (args.checkpoint or default_checkpoint())
    encoder, source = build_encoder(args.encoder, checkpoint, args.device)
    size = encoder.config.image_size

    import transformers

    print(f"encoder: {source}; {args.device}, {args.dtype}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()}")
    if args.device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name()}")
    result: dict = {"source": source, "device": args.device, "dtype": args.dtype, "threads": args.threads,
                    "keep_rate": args.keep_rate, "r": args.r, "cuda_graphs": args.cuda_graphs}
    if args.check:
        torch.manual_seed(7)
        result["check_max_abs_diff"] = check_equal(encoder, torch.randn(2, 3, size, size, device=args.device))
        print("max |difference| to the transformers forward (fp32):", result["check_max_abs_diff"])

    encoder.to(getattr(torch, args.dtype))
    dvit = DynamicViTTower(encoder, keep_rate=args.keep_rate).to(args.device, getattr(torch, args.dtype)).eval()
    cget = CrossGETTower(encoder, r=args.r).to(args.device, getattr(torch, args.dtype)).eval()
    models = {"unpruned": ViTRunner(encoder).eval(), "dynamicvit": dvit, "crossget": cget}
    print(f"dynamicvit: keep_rate {args.keep_rate}, pruning before layers {dvit.pruning_layers}, "
          f"patches kept {dvit.keep_counts}, tokens per layer {dvit.tokens_per_layer()}")
    print(f"crossget:   r {args.r}, guidance {cget.guidance}, tokens per layer {cget.tokens_per_layer()} "
          f"(+1 cross token), output tokens {cget.output_tokens()}")

    flops: dict[str, dict] = {}
    if not args.no_flops:
        from benchmark.measure.flops import count_flops

        for name, model in models.items():
            per_image = []
            for seed in range(args.flop_batches):
                torch.manual_seed(100 + seed)
                x = torch.randn(args.flop_batch_size, 3, size, size, device=args.device,
                                dtype=getattr(torch, args.dtype))
                per_image.append(count_flops(model, x).total / args.flop_batch_size / 1e9)
            flops[name] = {"gflops_mean": statistics.mean(per_image), "gflops_std": statistics.pstdev(per_image)}
        base = flops["unpruned"]["gflops_mean"]
        print(f"\nFLOPs per image (fvcore, multiply-adds), mean +- std over {args.flop_batches} random batches "
              f"of {args.flop_batch_size}")
        for name, f in flops.items():
            print(f"  {name:<11} {f['gflops_mean'] * 1e3:10.3f} MFLOPs +- {f['gflops_std'] * 1e3:.3f}   "
                  f"ratio {f['gflops_mean'] / base:.3f}")
        result["flops"] = flops

    timing = {}
    for batch in args.batch_sizes:
        torch.manual_seed(batch)
        x = torch.randn(batch, 3, size, size, device=args.device, dtype=getattr(torch, args.dtype))
        timed = {k: CudaGraphed(m, x) for k, m in models.items()} if args.cuda_graphs else models
        timing[batch] = time_models(timed, x, args.warmup, args.repeats)
        t0 = timing[batch]["unpruned"]["median_s"]
        print(f"\nwall time{' (CUDA graphs)' if args.cuda_graphs else ''}, batch {batch}, threads {args.threads}, "
              f"{args.repeats} interleaved repeats after {args.warmup} warm-up (load average {os.getloadavg()})")
        print(f"  {'model':<11} {'cold ms':>9} {'median ms':>10} {'p90 ms':>8} {'img/s':>8} {'time ratio':>11} "
              f"{'FLOP ratio':>11}")
        for name, t in timing[batch].items():
            ratio = f"{flops[name]['gflops_mean'] / flops['unpruned']['gflops_mean']:11.3f}" if flops else f"{'-':>11}"
            print(f"  {name:<11} {t['cold_s'] * 1e3:9.1f} {t['median_s'] * 1e3:10.2f} {t['p90_s'] * 1e3:8.2f} "
                  f"{t['images_per_s']:8.0f} {t['median_s'] / t0:11.3f} {ratio}")
    result["timing"] = timing
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
