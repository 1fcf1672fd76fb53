"""The plan of ``bench reproduce``: its steps, built from the registries only.

1. One step per registered model (:data:`benchmark.registry.MODELS`), tiny, on SynthScenes,
   tag ``default``: the run ``bench run --model M`` makes. Models come in dependency order
   (a class's ``checkpoint_dependencies`` first, then by name), so every dependency's step
   trains the checkpoint the later ones load from the runner's cache.
2. One ``--task speed`` step per pair of :data:`SPEED_PAIRS` whose models both run: the
   model timed against the baseline side by side (the "faster" claim reads it). One
   *matched-training* step per pair of the claims' ``matched`` (ours, blip2): the baseline
   trained as many epochs as the model in total (the epochs of the baseline checkpoint it
   starts from plus its own), tag ``matched-<model>``: the "at equal training" claim reads it.
3. One step per arm of every ablation folder (:func:`benchmark.ablation_folders.discover`), tag
   ``ablate-<ablation>-<arm>``: the run ``bench ablate`` makes. An arm whose config equals an
   earlier step's (``config_hash`` after :func:`benchmark.ablate.canonical`; tags and folders do
   not count) is a :class:`~benchmark.reproduce.steps.SharedStep`: the report groups runs by
   config, so the plain ``ours`` run *is* the ``qscaler: with`` arm.
4. With ``seeds`` N > 1 (``bench reproduce --seeds N``): the runs the claims compare
   (:data:`benchmark.reporting.claims.CLAIMS`: each claim's ``models``, the speed pair when a
   claim reads ``--task speed`` runs, its matched-training runs, and the arms of each claim's
   ``ablations``) again at each extra seed ``base + 1, ..., base + N - 1`` (base: the run
   seed, 0 unless ``--set seed=S``),
   tags suffixed ``-seed<S>`` (``default-seed1``, ``ablate-qscaler-without-seed1``) so no result
   file clashes. Each extra seed is a whole new training: the data's instruction templates, the
   dependencies (CLIP, BLIP2: trained by the runner at the run's seed) and every weight follow the
   seed; only what is shared at one seed is shared (the default arms, a ``conditioning`` arm's
   checkpoint). The report then gives every claim at each seed and across seeds
   (:mod:`benchmark.reporting.claims_seeds`).
5. The report (:func:`benchmark.reporting.build.write_reports`).

A model is skipped, with the reason, when its class declares ``sizes`` without ``"tiny"`` or
depends on a model that is skipped, not registered or broken; an ablation on such a model
likewise. A model class that cannot be imported, or a shipped config that is no valid run,
becomes a failing step (the others still run). The user's overrides (``--config``, ``--set``)
apply on every run step and are validated before anything runs; they may not set what the plan
fixes (:data:`FIXED`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from benchmark.ablate import arm_config, canonical
from benchmark.ablation_folders import Ablation, discover
from benchmark.config import DEFAULT_TASK, MAX_SEED, ConfigError, RunConfig, build_run_config, from_dict, model_defaults
from benchmark.registry import MODELS, Registry, UnknownNameError
from benchmark.reporting.claims import CLAIMS
from benchmark.reporting.options import ReportOptions
from benchmark.reproduce.steps import BrokenStep, ReportStep, RunStep, SharedStep, SkippedStep, Step
from benchmark.store import dependency_config

DATASET = "synthetic"
SIZE = "tiny"
MODEL_TAG = "default"
REPORT = "report"
#: run-config keys the plan sets itself (per step); user overrides may not
FIXED = ("model", "dataset", "size", "tag", "task", "results_dir", "cache_dir")
#: (model, baseline) pairs timed side by side by ``bench run --model M --task speed``
SPEED_PAIRS = (("ours", "blip2"),)
#: ``--seeds``: how many seeds the claims' runs get (the base seed and N - 1 more)
MAX_SEEDS = 20


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    seeds: tuple[int, ...] = ()  # the base seed, then the extra seeds of ``--seeds`` (empty: not recorded)

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for s in self.steps:
            kind = "RunStep" if isinstance(s, RunStep) else type(s).__name__  # subclasses count as their base
            kinds[kind] = kinds.get(kind, 0) + 1
        names = (
            ("RunStep", "to run"),
            ("SharedStep", "shared with an earlier step"),
            ("SkippedStep", "skipped"),
            ("BrokenStep", "broken"),
            ("ReportStep", "report"),
        )
        text = f"{len(self.steps)} steps: " + ", ".join(f"{kinds[k]} {label}" for k, label in names if k in kinds)
        if len(self.seeds) > 1:
            text += f"; seeds {', '.join(map(str, self.seeds))} (the claims' runs at each, base {self.seeds[0]})"
        return text


def load_error(models: Registry, name: str) -> str | None:
    """Why ``name``'s class cannot be imported (None: it can)."""
    try:
        models.get(name)
    except Exception as e:  # noqa: BLE001 - one broken model must not stop the plan
        return f"cannot import {models.entry(name).target}: {type(e).__name__}: {e}"
    return None


def dependencies(models: Registry, name: str) -> list[str]:
    """The registered models whose checkpoints ``name``'s class starts from (tiny size)."""
    if load_error(models, name):
        return []
    return sorted(set((getattr(models.get(name), "checkpoint_dependencies", None) or {}).values()))


def dependency_order(models: Registry) -> list[str]:
    """Every registered model, each after the models it depends on (ties by name)."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order or name not in models:
            return
        if name in visiting:
            raise ConfigError(f"models depend on each other in a cycle: {' -> '.join(visiting + [name])}")
        visiting.append(name)
        for dep in dependencies(models, name):
            visit(dep)
        visiting.pop()
        order.append(name)

    for name in models.names():
        visit(name)
    return order


def skip_reason(models: Registry, name: str, skipped: dict[str, str]) -> str | None:
    """Why ``name`` cannot run tiny on SynthScenes (None: it can)."""
    sizes = getattr(models.get(name), "sizes", None)
    if sizes is not None and SIZE not in sizes:
        return f"{name} has no {SIZE} variant (its class declares sizes {list(sizes)})"
    for dep in dependencies(models, name):
        if dep not in models:
            return f"{name} starts from {dep!r}, which is not a registered model"
        if dep in skipped:
            return f"{name} starts from {dep}, which is not run ({skipped[dep]})"
    return None


def refuse_fixed(overrides: Sequence[dict]) -> None:
    for o in overrides:
        fixed = sorted(set(o) & set(FIXED))
        if fixed:
            raise ConfigError(
                f"--config/--set: {', '.join(fixed)} is set by bench reproduce itself "
                f"({DATASET}, {SIZE}, one tag per step; use --results-dir / --cache-dir for folders)"
            )


def _model_step(models: Registry, name: str, overrides: Sequence[dict], fixed: dict) -> Step:
    cls = models.get(name)
    own = {"model": name, "tag": MODEL_TAG, **fixed}
    try:
        from_dict(cls.Config, build_run_config(model_defaults(name), own).model_args, "model_args")
    except ConfigError as e:
        return BrokenStep(name, (name,), f"the shipped config of {name} is no valid {SIZE} run: {e}")
    cfg = build_run_config(model_defaults(name), *overrides, own)
    from_dict(cls.Config, cfg.model_args, "model_args")  # the user's overrides, checked before anything runs
    return RunStep(name, (name,), cfg)


def _arm_steps(
    ablation: Ablation,
    overrides: Sequence[dict],
    fixed: dict,
    models: Registry,
    skipped: dict[str, str],
    seed: int | None = None,
) -> list[Step]:
    """The arms' steps; ``seed``: at an extra seed (titles, tags and selectors say which)."""
    steps: list[Step] = []
    for arm in ablation.arms:
        title = f"{ablation.model} (ablation {ablation.name}: {arm.name}{_at(seed)})"
        selectors = (ablation.name, f"{ablation.name}:{arm.name}", *_seed_selectors(seed))
        own = {"tag": ablation.tag(arm) + seed_suffix(seed), **fixed}
        if ablation.model not in models or ablation.model in skipped:
            why = skipped.get(ablation.model, f"{ablation.model!r} is not a registered model")
            steps.append(SkippedStep(title, selectors, f"ablation {ablation.name} is on {ablation.model}: {why}"))
            continue
        try:
            arm_config(ablation, arm, own)
        except ConfigError as e:
            steps.append(BrokenStep(title, selectors, f"{arm.path}: no valid {SIZE} run: {e}"))
            continue
        steps.append(RunStep(title, selectors, arm_config(ablation, arm, *overrides, own)))
    return steps


def seed_suffix(seed: int | None) -> str:
    """The tag suffix of a run at an extra seed (``-seed3``; none at the base seed)."""
    return "" if seed is None else f"-seed{seed}"


def _at(seed: int | None) -> str:
    return "" if seed is None else f", seed {seed}"


def _seed_selectors(seed: int | None) -> tuple[str, ...]:
    return () if seed is None else (f"seed{seed}",)


def extra_seeds(base: int, n: int) -> list[int]:
    """The seeds of ``--seeds n`` beyond ``base``: ``base + 1, ..., base + n - 1``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
        raise ConfigError(f"--seeds must be an integer in [1, {MAX_SEEDS}], got {n!r}")
    if base + n - 1 > MAX_SEED:
        raise ConfigError(f"--seeds {n} from seed {base} passes the largest seed {MAX_SEED}")
    return [base + i for i in range(1, n)]


class ClaimRuns(NamedTuple):
    """The runs the claims compare: the models whose plain runs they read, whether one reads
    ``--task speed`` runs, the (model, baseline) pairs whose matched-training run they read, the
    ablation folders whose arms they read."""

    models: list[str]
    speed: bool
    matched: list[tuple[str, str]]
    ablations: list[str]


def claim_runs() -> ClaimRuns:
    """:class:`ClaimRuns` of :data:`~benchmark.reporting.claims.CLAIMS`."""
    return ClaimRuns(
        sorted({m for c in CLAIMS.values() for m in c.models}),
        any("speed" in c.tasks for c in CLAIMS.values()),
        sorted({p for c in CLAIMS.values() for p in c.matched}),
        sorted({a for c in CLAIMS.values() for a in c.ablations}),
    )


def matched_epochs(cfg: RunConfig, baseline: str, models: Registry) -> int:
    """The epochs of training behind ``cfg``'s run: its own plus those of the ``baseline``
    checkpoint its model starts from (the dependency config the runner trains it with)."""
    cls = models.get(cfg.model)
    fields = [f for f, m in (getattr(cls, "checkpoint_dependencies", None) or {}).items() if m == baseline]
    if not fields:
        raise ConfigError(f"{cfg.model} does not start from a {baseline} checkpoint: no training to match")
    model_config = from_dict(cls.Config, cfg.model_args, "model_args")
    dep_overrides = (getattr(model_config, "dependency_overrides", None) or {}).get(fields[0])
    return cfg.train.max_epochs + dependency_config(cfg, baseline, dep_overrides).train.max_epochs


def _matched_step(
    model_cfg: RunConfig,
    baseline: str,
    overrides: Sequence[dict],
    fixed: dict,
    models: Registry,
    seed: int | None = None,
) -> Step:
    """``baseline``'s plain run, trained as many epochs as the model's plain run (``model_cfg``,
    its step's config) in total."""
    model = model_cfg.model
    selectors = ("matched", f"matched:{model}", *_seed_selectors(seed))
    try:
        epochs = matched_epochs(model_cfg, baseline, models)
    except ConfigError as e:
        return BrokenStep(f"{baseline} (trained as long as {model}{_at(seed)})", selectors, str(e))
    own = {"model": baseline, "tag": f"matched-{model}" + seed_suffix(seed), **fixed, "train": {"max_epochs": epochs}}
    return RunStep(
        f"{baseline} (trained as long as {model}: {epochs} epochs{_at(seed)})",
        selectors,
        build_run_config(model_defaults(baseline), *overrides, own),
    )


def _seed_steps(
    seed: int,
    steps: Sequence[Step],
    overrides: Sequence[dict],
    fixed: dict,
    models: Registry,
    skipped: dict[str, str],
    ablations: dict[str, Ablation],
) -> list[Step]:
    """The claims' runs (:func:`claim_runs`) at one extra seed, in the base plan's order."""
    wanted, speed, matched, wanted_ablations = claim_runs()
    at = {**fixed, "seed": seed}
    out: list[Step] = []
    ran: dict[str, RunConfig] = {}  # the plain run of each model at this seed
    for step in steps:
        if isinstance(step, RunStep) and step.config is not None and step.config.task == DEFAULT_TASK:
            name = step.config.model
            if step.title == name and name in wanted:
                own = {"model": name, "tag": MODEL_TAG + seed_suffix(seed), **at}
                ran[name] = build_run_config(model_defaults(name), *overrides, own)
                out.append(RunStep(f"{name}{_at(seed)}", (name, *_seed_selectors(seed)), ran[name]))
    for model, baseline in SPEED_PAIRS if speed else ():
        if {model, baseline} <= ran.keys():
            out.append(_speed_step(model, baseline, overrides, at, seed))
    for model, baseline in matched:
        if {model, baseline} <= ran.keys():
            out.append(_matched_step(ran[model], baseline, overrides, at, models, seed))
    for name in wanted_ablations:
        if name in ablations:
            out += _arm_steps(ablations[name], overrides, at, models, skipped, seed)
    return out


def _speed_step(model: str, baseline: str, overrides: Sequence[dict], fixed: dict, seed: int | None = None) -> Step:
    own = {
        "model": model,
        "tag": MODEL_TAG + seed_suffix(seed),
        "task": "speed",
        "task_args": {"baseline": baseline},
        **fixed,
    }
    return RunStep(
        f"{model} (speed against {baseline}{_at(seed)})",
        ("speed", f"speed:{model}", *_seed_selectors(seed)),
        build_run_config(model_defaults(model), *overrides, own),
    )


def select(steps: Sequence[Step], only: Iterable[str]) -> list[Step]:
    """The steps any of ``only`` names (all of them when ``only`` is empty)."""
    wanted = [s.strip() for item in only for s in item.split(",") if s.strip()]
    if not wanted:
        return list(steps)
    valid = list(dict.fromkeys(sel for s in steps for sel in s.selectors))
    unknown = [w for w in wanted if w not in valid]
    if unknown:
        raise ConfigError(f"--only: unknown step(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return [s for s in steps if set(s.selectors) & set(wanted)]


def _share_key(cfg: RunConfig) -> str:
    try:
        return canonical(cfg).config_hash()
    except UnknownNameError:
        return cfg.config_hash()


def share(steps: Sequence[Step]) -> list[Step]:
    """Each run step whose config equals an earlier run step's becomes a :class:`SharedStep`."""
    first: dict[str, int] = {}
    out: list[Step] = []
    for i, step in enumerate(steps):
        if isinstance(step, RunStep) and step.config is not None:
            key = _share_key(step.config)
            if key in first:
                j = first[key]
                out.append(SharedStep(step.title, step.selectors, same_as=j, same_title=steps[j].title))
                continue
            first[key] = i
        out.append(step)
    return out


def build_plan(
    overrides: Sequence[dict] = (),
    *,
    results_dir: Path = Path("results"),
    out_dir: Path = Path("reports"),
    cache_dir: Path | None = None,
    only: Iterable[str] = (),
    report: ReportOptions | None = None,
    models: Registry = MODELS,
    ablations_root=None,
    seeds: int = 1,
) -> Plan:
    """Every registered model, every ablation arm, the claims' runs at ``seeds - 1`` more seeds,
    then the report; see the module docstring."""
    refuse_fixed(overrides)
    base = build_run_config({"model": "ours"}, *overrides).seed  # the run seed (validated), whatever the model
    more = extra_seeds(base, seeds)
    fixed: dict = {"dataset": DATASET, "size": SIZE, "results_dir": str(results_dir)}
    if cache_dir is not None:
        fixed["cache_dir"] = str(cache_dir)
    steps: list[Step] = []
    skipped: dict[str, str] = {}
    for name in dependency_order(models):
        error = load_error(models, name)
        if error:
            skipped[name] = f"{name} cannot be imported"
            steps.append(BrokenStep(name, (name,), error))
            continue
        reason = skip_reason(models, name, skipped)
        if reason:
            skipped[name] = reason
            steps.append(SkippedStep(name, (name,), reason))
        else:
            steps.append(_model_step(models, name, overrides, fixed))
    ran = {s.config.model: s.config for s in steps if isinstance(s, RunStep) and s.config is not None}
    for model, baseline in SPEED_PAIRS:
        if {model, baseline} <= ran.keys():
            steps.append(_speed_step(model, baseline, overrides, fixed))
    for model, baseline in claim_runs().matched:
        if {model, baseline} <= ran.keys():
            steps.append(_matched_step(ran[model], baseline, overrides, fixed, models))
    ablations = discover(ablations_root)
    for ablation in ablations.values():
        steps += _arm_steps(ablation, overrides, fixed, models, skipped)
    base_steps = list(steps)
    for seed in more:
        steps += _seed_steps(seed, base_steps, overrides, fixed, models, skipped, ablations)
    steps.append(ReportStep(REPORT, (REPORT,), Path(results_dir), Path(out_dir), report or ReportOptions()))
    return Plan(tuple(share(select(steps, only))), (base, *more))
