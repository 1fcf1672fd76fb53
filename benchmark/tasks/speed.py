"""``--task speed``: the run's model against a baseline (BLIP2 by default), image-encoding
throughput measured side by side in one process.

The ``throughput_img_s`` of two retrieval result files were each measured after their own
run, minutes apart; on a shared CPU their ratio moves with the machine (see
:mod:`benchmark.measure.paired`). This task loads both models, takes one batch of the
evaluated split's images (the same images for both, drawn with the run's seed, each
through its model's own transform) and times ``encode_images`` of the two in alternating
rounds. Metrics: ``speed/img_s`` and ``speed/baseline_img_s`` (medians over the rounds),
``speed/ratio`` (median of the per-round ratios model / baseline), ``speed/ratio_min`` and
``speed/ratio_max``; the per-round figures are under ``speed`` in the result file, which
the claims report reads for "ours encodes more images per second than BLIP2".

The baseline, tiny: resolved as a dependency is -- the baseline's shipped config on the run's
data and seed (plus ``task_args.baseline_overrides``), the checkpoint ``bench run --model
BASELINE`` trains by default and, for ours against BLIP2, the very BLIP2 ours starts from --,
taken from the runner's cache or trained now if absent. Full: loaded as is from
``task_args.baseline_overrides.model_args.pretrained``, by default the run's own ``--pretrained``
where both models load the same checkpoint family (ours and BLIP2: a Blip2ForImageTextRetrieval).
``task_args``: :class:`SpeedOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmark.config import ConfigError, build_run_config, from_dict, model_defaults
from benchmark.measure.paired import paired_throughput
from benchmark.measure.run_costs import pick, pixel_batch
from benchmark.preflight import create_model
from benchmark.registry import MODELS
from benchmark.store import checkpoint_family, dependency_config, ensure_checkpoint, pretrained_of, resolve_run
from benchmark.tasks.base import TaskContext, TaskEvaluation
from benchmark.threads import torch_threads


@dataclass(frozen=True)
class SpeedOptions:
    """``task_args`` of ``--task speed``.

    baseline: the registered model the run's model is timed against.
    baseline_overrides: run-config overrides of the baseline (as ``--set`` would give them to
        ``bench run --model BASELINE``, e.g. ``{"model_args": {...}}``); at size full they must
        name its checkpoint, ``{"model_args": {"pretrained": ...}}``.
    rounds: alternating rounds (>= 2: one in each order).
    batch_size: images per timed ``encode_images`` call.
    warmup / repeats / min_time_s: per model and round, as in ``eval.measurement``.
    threads: torch intra-op threads while timing (None: the run's); restored afterwards.
    """

    baseline: str = "blip2"
    baseline_overrides: dict = field(default_factory=dict)
    rounds: int = 8
    batch_size: int = 32
    warmup: int = 2
    repeats: int = 5
    min_time_s: float = 0.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.rounds < 2:
            raise ConfigError(f"task_args.rounds must be >= 2 (one round in each order), got {self.rounds}")
        if self.batch_size < 1:
            raise ConfigError(f"task_args.batch_size must be >= 1, got {self.batch_size}")
        if self.repeats < 5:
            raise ConfigError(f"task_args.repeats must be >= 5 (a median of at least 5 calls), got {self.repeats}")
        if self.warmup < 0 or self.min_time_s < 0:
            raise ConfigError("task_args.warmup and task_args.min_time_s must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("task_args.threads must be >= 1 or null")
        for key in ("model", "dataset", "size", "seed", "task", "task_args"):
            if key in self.baseline_overrides:
                raise ConfigError(
                    f"task_args.baseline_overrides.{key}: set by the run itself (the baseline is "
                    "timed on the run's data, size and seed)"
                )


def speed_options(cfg) -> SpeedOptions:
    """The run's :class:`SpeedOptions`, checked against the registry and the run's size."""
    options = from_dict(SpeedOptions, cfg.task_args, "task_args")
    if options.baseline not in MODELS:
        raise ConfigError(
            f"task_args.baseline: unknown model {options.baseline!r}; valid models: {', '.join(MODELS.names())}"
        )
    if options.baseline == cfg.model:
        raise ConfigError(f"task_args.baseline: {cfg.model} against itself measures nothing; name another model")
    given = (options.baseline_overrides.get("model_args") or {}).get("pretrained")
    if cfg.size == "full" and not given and _family(cfg.model) != _family(options.baseline):
        raise ConfigError(
            f"task speed at size full: task_args.baseline_overrides.model_args.pretrained must name "
            f"the baseline's checkpoint (hub id or local path): {options.baseline} does not load "
            f"{cfg.model}'s (--pretrained)"
        )
    return options


def baseline_config(cfg, options: SpeedOptions):
    """The baseline's run config: a dependency's (tiny) or the pretrained model as is (full)."""
    if cfg.size == "tiny":
        return dependency_config(cfg, options.baseline, options.baseline_overrides)
    own = {
        "model": options.baseline,
        "dataset": cfg.dataset,
        "size": cfg.size,
        "seed": cfg.seed,
        "cache_dir": cfg.cache_dir,
        "results_dir": cfg.results_dir,
        "train": {"max_epochs": 0},
    }
    pretrained = cfg.model_args.get("pretrained")
    if pretrained and _family(cfg.model) == _family(options.baseline):  # e.g. ours timed against BLIP-2
        own["model_args"] = {"pretrained": pretrained}
    return build_run_config(model_defaults(options.baseline), own, options.baseline_overrides)


def _family(model: str) -> str | None:
    """The pretrained checkpoint family of a registered model (blip2, clip), None if unknown."""
    return checkpoint_family(MODELS.get(model).Config) if model in MODELS else None


def load_baseline(cfg, options: SpeedOptions, dm, progress: bool):
    """``(baseline model, provenance)``; a tiny baseline not yet cached is trained now."""
    bcfg = baseline_config(cfg, options)
    if bcfg.train.max_epochs > 0:
        ckpt, trained = ensure_checkpoint(bcfg, progress=progress, announce=f"baseline of --task speed for {cfg.model}")
        return MODELS.get(options.baseline).load_checkpoint(ckpt), {
            "model": options.baseline,
            "checkpoint": str(ckpt),
            "trained_this_run": trained,
        }
    parts = resolve_run(bcfg)
    model = create_model(parts.model_cls, parts.model_config, bcfg.train.optim, dm.vocabulary_texts())
    return model, {"model": options.baseline, "pretrained": pretrained_of(parts.model_config)}


def speed_metrics(paired) -> dict[str, float]:
    """The result file's metrics of a :class:`~benchmark.measure.paired.PairedThroughput`."""
    lo, hi = paired.ratio_range
    return {
        "speed/img_s": paired.median(0),
        "speed/baseline_img_s": paired.median(1),
        "speed/ratio": paired.ratio,
        "speed/ratio_min": lo,
        "speed/ratio_max": hi,
    }


class SpeedTask:
    measures_cost = False  # the retrieval run measures each model's own cost
    Options = SpeedOptions

    def check(self, cfg) -> None:
        speed_options(cfg)

    def evaluate(self, ctx: TaskContext) -> TaskEvaluation:
        cfg = ctx.cfg
        options = speed_options(cfg)
        baseline, provenance = load_baseline(cfg, options, ctx.dm, ctx.progress)
        eval_set = ctx.dm.eval_set()
        images = pick(np.random.default_rng([cfg.seed, 0]), eval_set.n_images, options.batch_size)
        device = str(ctx.tester.strategy.root_device)
        steps = []
        for name, model in ((cfg.model, ctx.model), (options.baseline, baseline)):
            model.to(device).eval()
            batch = pixel_batch(eval_set, model.image_transform(), images).to(device)
            steps.append((name, lambda m=model, b=batch: m.encode_images(b)))
        with torch_threads(options.threads):
            paired = paired_throughput(
                (steps[0], steps[1]),
                options.batch_size,
                rounds=options.rounds,
                device=device,
                warmup=options.warmup,
                repeats=options.repeats,
                min_time_s=options.min_time_s,
            )
        return TaskEvaluation(
            metrics=speed_metrics(paired),
            per_query={},
            provenance=eval_set.provenance()
            | {
                "speed": {
                    "baseline": provenance,
                    "images": images.tolist(),
                    "step": "encode_images(batch of test images)",
                }
            },
            extra={"speed": paired.to_dict() | {"baseline": options.baseline}},
        )

    def summary(self, result: dict) -> list[str]:
        s, m = result["speed"], result["metrics"]
        a, b = s["names"]
        return [
            (
                f"{a} {m['speed/img_s']:.1f} img/s, {b} {m['speed/baseline_img_s']:.1f} img/s; {a} / {b} = "
                f"{m['speed/ratio']:.3f} (median of {s['rounds']} alternating rounds; range "
                f"{m['speed/ratio_min']:.3f}-{m['speed/ratio_max']:.3f}; batch {s['batch_size']}, "
                f"{s['torch_threads']} threads, {s['device']})"
            )
        ]
