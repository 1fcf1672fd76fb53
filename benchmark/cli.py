"""The ``bench`` command line: thin typed functions over library code.

Heavy imports (torch, lightning, transformers) happen inside the commands, so ``bench
--help`` answers at once. Every command is a plain function, callable in-process by the
tests through ``typer.testing.CliRunner``. Bad input (unknown model or dataset, a bad
option, an absent or malformed dataset, an unusable output folder) prints one clear message
and exits with code 2. Run configs are built from the flags by one builder
(``benchmark/run_flags.py``: defaults < ``--config`` file < flags given explicitly < ``--set``)
and checked as a whole before any data is prepared (``benchmark/preflight.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchmark.cli_options import (
    DataFolderOption,
    DatasetOption,
    FeedbackSetOption,
    LlmModelOption,
    LlmOption,
    ModelEpochsOption,
    ModelOption,
    PretrainedOption,
    RunConfigFileOption,
    RunSetOption,
    SizeOption,
    SuiteConfigFileOption,
    SuiteSetOption,
    TrainingProgressOption,
)
from benchmark.registry import DATASETS, MODELS, TASKS, UnknownNameError

app = typer.Typer(
    name="bench",
    help="instructsee-bench: train, evaluate and report instruction-aware image-text retrieval models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

USAGE_ERROR = 2


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(USAGE_ERROR)


def _progress_bars(progress: bool) -> None:
    """``--no-progress`` also silences transformers' weight-loading bars (Lightning's follow the flag)."""
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@app.command()
def run(
    ctx: typer.Context,
    model: ModelOption = "clip",
    dataset: DatasetOption = "synthetic",
    size: Annotated[
        str, typer.Option(help="tiny (trained here from scratch) or full (pretrained checkpoint).")
    ] = "tiny",
    tag: Annotated[
        str,
        typer.Option(
            help="Names the result file results/<model>__<dataset>__<tag>.json (other tasks: <model>__<dataset>__<task>__<tag>.json)."
        ),
    ] = "default",
    task: Annotated[str, typer.Option(help=f"Task: {', '.join(TASKS.names())}.")] = "retrieval",
    seed: Annotated[int, typer.Option(help="Seed for data generation, training and evaluation.")] = 0,
    epochs: Annotated[
        int | None,
        typer.Option(help="Training epochs (0 = evaluate as is); the models it starts from keep their own."),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: $INSTRUCTSEE_DATA_ROOT/<dataset>).")
    ] = None,
    pretrained: PretrainedOption = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of config overrides.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override KEY.PATH=VALUE (repeatable).")] = None,
    results_dir: Annotated[Path, typer.Option(help="Where result files go.")] = Path("results"),
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache for data, checkpoints, logs (default $INSTRUCTSEE_CACHE or ~/.cache/instructsee-bench)."
        ),
    ] = None,
    devices: Annotated[int | None, typer.Option(help="Devices per node for Lightning.")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Evaluate this trained suite checkpoint folder (nothing is trained).")
    ] = None,
    retrain: Annotated[bool, typer.Option(help="Train even if a checkpoint for this config is cached.")] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            help="auto: an interrupted training resumes from its last resume point in the cache (default); never: start over."
        ),
    ] = None,
    skip_existing: Annotated[bool, typer.Option(help="Skip when the result file already holds this config.")] = False,
    strict: Annotated[
        bool,
        typer.Option(
            help="A missing or unreadable image is an error (default: skipped, counted, listed in the result file)."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train (tiny) or load (full) one model, evaluate it on one dataset and task, write one result file."""
    _progress_bars(progress)
    from benchmark.config import ConfigError
    from benchmark.run_flags import CliConfig
    from benchmark.runner import run as run_one
    from datamodules.base import DataError

    flags = CliConfig.from_context(
        ctx,
        config=config,
        sets=set_,
        model=model,
        dataset=dataset,
        size=size,
        tag=tag,
        task=task,
        seed=seed,
        epochs=epochs,
        data_root=data_root,
        pretrained=pretrained,
        results_dir=results_dir,
        cache_dir=cache_dir,
        devices=devices,
        strategy=strategy,
        checkpoint=checkpoint,
        resume=resume,
        strict=strict,
    )
    try:
        cfg = flags.build()
        outcome = run_one(cfg, retrain=retrain, skip_existing=skip_existing, progress=progress)
    except (ConfigError, DataError, UnknownNameError) as e:
        raise _fail(str(e)) from None
    if outcome.skipped:
        typer.echo(f"skipped: {outcome.path} already holds this config")
        return
    if not outcome.written:  # a DDP rank other than 0: rank 0 prints the summary once
        return
    for line in TASKS.get(cfg.task)().summary(outcome.result):
        typer.echo(line)
    typer.echo(f"wrote {outcome.path} ({outcome.result['timings']['total_s']:.1f} s)")  # type: ignore[index]


@app.command()
def report(
    results_dir: Annotated[Path, typer.Option(help="Folder of result files.")] = Path("results"),
    out_dir: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("reports"),
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples of the queries for intervals and paired tests.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples.")] = 0,
) -> None:
    """Build the reports (results, comparison, ablations, claims, feedback, figures) from --results-dir alone."""
    from benchmark.reporting.build import write_reports
    from benchmark.reporting.options import ReportOptions, ReportOptionsError
    from benchmark.reporting.paper import PaperTablesError
    from benchmark.results import ResultFileError

    try:
        outcome = write_reports(results_dir, out_dir, ReportOptions(n_boot=bootstrap, seed=seed))
    except (ReportOptionsError, ResultFileError, PaperTablesError) as e:
        raise _fail(str(e)) from None
    for note in outcome.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {len(outcome.files)} files under {out_dir}")


@app.command()
def feedback(
    ctx: typer.Context,
    model: ModelOption = "ours",
    dataset: DatasetOption = "synthetic",
    rounds: Annotated[int, typer.Option(help="Feedback rounds T (rankings 0..T are measured).")] = 5,
    mode: Annotated[str, typer.Option(help="Arms besides the controls (none, exclude): all, refresh or llm.")] = "all",
    llm: LlmOption = "rules",
    llm_model: LlmModelOption = None,
    display: Annotated[int, typer.Option(help="Items the simulated user sees per round.")] = 5,
    max_queries: Annotated[
        int | None, typer.Option(help="Only the first N queries (default: all); the tag defaults to first<N>.")
    ] = None,
    size: SizeOption = "tiny",
    tag: Annotated[
        str | None,
        typer.Option(
            help="Names results/feedback__<model>__<dataset>__<tag>.json and .jsonl (default: default, or first<N> with --max-queries N, so a partial run does not replace a whole one)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of data, training and the simulated user.")] = 0,
    epochs: ModelEpochsOption = None,
    data_root: DataFolderOption = None,
    pretrained: PretrainedOption = None,
    config: RunConfigFileOption = None,
    set_: RunSetOption = None,
    feedback_set: FeedbackSetOption = None,
    results_dir: Annotated[Path, typer.Option(help="Where result files go.")] = Path("results"),
    cache_dir: Annotated[Path | None, typer.Option(help="Cache for data and checkpoints.")] = None,
    progress: TrainingProgressOption = False,
) -> None:
    """Interactive refinement with a simulated user: every arm, rounds 0..T, on the evaluated split."""
    _progress_bars(progress)
    from benchmark.config import ConfigError
    from benchmark.feedback.options import feedback_config
    from benchmark.feedback.session import run_feedback
    from benchmark.preflight import check_run
    from benchmark.run_flags import CliConfig
    from datamodules.base import DataError

    flags = CliConfig.from_context(
        ctx,
        config=config,
        sets=set_,
        model=model,
        dataset=dataset,
        size=size,
        tag=tag or ("default" if max_queries is None else f"first{max_queries}"),
        seed=seed,
        epochs=epochs,
        data_root=data_root,
        pretrained=pretrained,
        results_dir=results_dir,
        cache_dir=cache_dir,
    )
    try:
        cfg = flags.build()
        fb = feedback_config(
            rounds=rounds,
            display=display,
            mode=mode,
            llm=llm,
            llm_model=llm_model,
            max_queries=max_queries,
            sets=feedback_set or [],
        )
        check_run(cfg)
        outcome = run_feedback(cfg, fb, progress=progress)
    except (ConfigError, DataError, UnknownNameError) as e:
        raise _fail(str(e)) from None
    for line in outcome.lines():
        typer.echo(line)


@app.command()
def serve(
    ctx: typer.Context,
    model: ModelOption = "ours",
    dataset: DatasetOption = "synthetic",
    host: Annotated[
        str, typer.Option(help="Address to listen on (not loopback: served with a warning).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port in [0, 65535]; 0 = a free port (printed).")] = 8000,
    top_k: Annotated[int, typer.Option(help="Results shown per search and round.")] = 8,
    llm: LlmOption = "rules",
    llm_model: LlmModelOption = None,
    train: Annotated[
        bool, typer.Option(help="Train the model now if no checkpoint is cached (--no-train: say how instead).")
    ] = True,
    size: SizeOption = "tiny",
    tag: Annotated[str, typer.Option(help="Names the export results/serve__<model>__<dataset>__<tag>.jsonl.")] = (
        "default"
    ),
    seed: Annotated[int, typer.Option(help="Seed of data and training.")] = 0,
    epochs: ModelEpochsOption = None,
    data_root: DataFolderOption = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A trained suite checkpoint folder to serve.")] = None,
    pretrained: PretrainedOption = None,
    config: RunConfigFileOption = None,
    set_: RunSetOption = None,
    feedback_set: FeedbackSetOption = None,
    results_dir: Annotated[Path, typer.Option(help="Where exported histories go.")] = Path("results"),
    cache_dir: Annotated[Path | None, typer.Option(help="Cache for data, checkpoints and gallery encodings.")] = None,
    progress: TrainingProgressOption = False,
) -> None:
    """A local web app: type an instruction, see the top-k images, mark them, refresh or refine (LLM-guided)."""
    _progress_bars(progress)
    from benchmark.config import ConfigError
    from benchmark.feedback.options import feedback_config
    from benchmark.preflight import check_run, check_writable_folder
    from benchmark.run_flags import CliConfig
    from benchmark.serve.config import ServeConfig
    from benchmark.serve.server import serve as run_server
    from datamodules.base import DataError

    flags = CliConfig.from_context(
        ctx,
        config=config,
        sets=set_,
        model=model,
        dataset=dataset,
        size=size,
        tag=tag,
        seed=seed,
        epochs=epochs,
        data_root=data_root,
        checkpoint=checkpoint,
        pretrained=pretrained,
        results_dir=results_dir,
        cache_dir=cache_dir,
    )
    try:
        sc = ServeConfig(host=host, port=port, top_k=top_k, train=train)
        cfg = flags.build()
        fb = feedback_config(
            rounds=1, display=top_k, mode="all", llm=llm, llm_model=llm_model, max_queries=None, sets=feedback_set or []
        )
        check_run(cfg, writes_results=False)
        check_writable_folder(Path(cfg.results_dir), "results_dir (--results-dir)")
        run_server(cfg, fb, sc, progress=progress)
    except (ConfigError, DataError, UnknownNameError) as e:
        raise _fail(str(e)) from None


data_app = typer.Typer(help="Check the real datasets' local folders.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command(name="check")
def data_check(
    dataset: Annotated[str, typer.Option(help="Dataset read from a folder: coco, medpix, rsicap or folder.")],
    data_root: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: $INSTRUCTSEE_DATA_ROOT/<dataset>).")
    ] = None,
    options: Annotated[
        str | None, typer.Option(help='Dataset options as JSON, e.g. \'{"train_split": "train_1"}\'.')
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache whose image_checks/ keeps the verdicts (default $INSTRUCTSEE_CACHE or ~/.cache/instructsee-bench)."
        ),
    ] = None,
    recheck: Annotated[
        bool, typer.Option(help="Open every image again, even those unchanged (size, mtime) since a cached check.")
    ] = False,
) -> None:
    """Validate a dataset folder: counts per split, missing and unreadable images.

    Verdicts are cached per image (path, size, mtime) under CACHE_DIR/image_checks, shared
    with runs: an unchanged image is not opened again (--recheck opens every image).
    Exit code 0: all fine; 1: some images missing or unreadable (runs skip them), or a
    problem line (an empty split, RSIEval images missing); 2: the folder or its annotations
    are not what the dataset expects.
    """
    if dataset not in DATASETS:
        raise _fail(str(UnknownNameError("dataset", dataset, DATASETS.names())))
    from datamodules.base import DataError
    from datamodules.check import check_dataset
    from datamodules.datamodule import DataConfig
    from datamodules.local import LocalDataModule
    from datamodules.safe_json import JsonReadError, loads_json

    cls = DATASETS.get(dataset)
    if not issubclass(cls, LocalDataModule):
        raise _fail(f"dataset {dataset!r} is generated by the suite, not read from a folder: nothing to check")
    if data_root is None:
        import os

        from benchmark.store import DATA_ROOT_ENV

        env = os.environ.get(DATA_ROOT_ENV)
        data_root = Path(env) / dataset if env else None
    try:
        opts = loads_json(options, "--options") if options else {}
        if not isinstance(opts, dict):
            raise DataError("--options must be a JSON object")
        from benchmark.config import default_cache_dir

        dm = cls(DataConfig(root=str(data_root or ""), options=opts))
        dm.set_check_cache(Path(cache_dir or default_cache_dir()) / "image_checks")
        report = check_dataset(dm, recheck=recheck)
    except JsonReadError as e:
        raise _fail(str(e)) from None
    except DataError as e:
        raise _fail(str(e)) from None
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def ablate(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="Ablation: a folder of benchmark/configs/ablations (qscaler, qformer, attention, conditioning)."
        ),
    ],
    dataset: DatasetOption = "synthetic",
    size: Annotated[str, typer.Option(help="tiny or full.")] = "tiny",
    tag: Annotated[str, typer.Option(help="Prefix of the arms' tags: <tag>-<ablation>-<arm>.")] = "ablate",
    seed: Annotated[int, typer.Option(help="Seed for data generation, training and evaluation.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of every arm.")] = None,
    data_root: DataFolderOption = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of config overrides, applied on every arm.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override KEY.PATH=VALUE on every arm.")] = None,
    results_dir: Annotated[Path, typer.Option(help="Where result files go.")] = Path("results"),
    cache_dir: Annotated[Path | None, typer.Option(help="Cache for data, checkpoints, logs.")] = None,
    retrain: Annotated[bool, typer.Option(help="Train even if a checkpoint for an arm is cached.")] = False,
    skip_existing: Annotated[
        bool, typer.Option(help="Skip an arm whose result file already holds its config.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run every arm of an ablation (one result file each), then print its table."""
    _progress_bars(progress)
    from benchmark.ablate import ablation_table, get, run_ablation
    from benchmark.config import ConfigError
    from benchmark.run_flags import CliConfig
    from datamodules.base import DataError

    flags = CliConfig.from_context(
        ctx,
        config=config,
        sets=set_,
        dataset=dataset,
        size=size,
        seed=seed,
        epochs=epochs,
        data_root=data_root,
        results_dir=results_dir,
        cache_dir=cache_dir,
    )
    try:
        ablation = get(name)
        overrides = flags.layers()
        results = run_ablation(
            ablation, overrides, tag=tag, retrain=retrain, skip_existing=skip_existing, progress=progress
        )
    except (ConfigError, DataError, UnknownNameError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"{ablation.name} on {ablation.model}: {ablation.description}")
    typer.echo(ablation_table(ablation, results))


@app.command()
def vqa(
    ctx: typer.Context,
    image: Annotated[Path, typer.Option(help="The image file the question is about.")],
    question: Annotated[str, typer.Option(help='The question, e.g. "What colour is the circle?".')],
    model: Annotated[
        str, typer.Option(help=f"Model: {', '.join(MODELS.names())} (the BLIP2 family answers).")
    ] = "ours",
    dataset: Annotated[str, typer.Option(help="The dataset the tiny VQA model was trained on.")] = "synthetic",
    size: Annotated[str, typer.Option(help="tiny (the cached model of `bench run --task vqa`) or full.")] = "tiny",
    seed: Annotated[int, typer.Option(help="The seed of the run that trained it.")] = 0,
    pretrained: Annotated[
        str | None, typer.Option(help="Size full: the retrieval checkpoint (hub id or local path).")
    ] = None,
    lm: Annotated[
        str | None, typer.Option(help="Size full: the Blip2ForConditionalGeneration checkpoint whose LM answers.")
    ] = "Salesforce/blip2-opt-2.7b",
    data_root: DataFolderOption = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON file of run-config overrides (as given to `bench run`).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Run-config override KEY.PATH=VALUE (as given to `bench run`).")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache holding the trained checkpoints.")] = None,
) -> None:
    """Answer one question about one image (tiny: never trains; run `bench run --task vqa` first)."""
    if not image.is_file():
        raise _fail(f"--image: {image}: image file not found")
    if not question.strip():
        raise _fail("--question: expected a question, got an empty string")
    from transformers.utils import logging as hf_logging

    from benchmark.config import ConfigError
    from benchmark.preflight import check_run
    from benchmark.run_flags import CliConfig
    from benchmark.tasks.vqa_training import load_vqa_model
    from datamodules.base import DataError, load_image

    hf_logging.disable_progress_bar()  # the answer alone on the terminal
    flags = CliConfig.from_context(
        ctx,
        config=config,
        sets=set_,
        model=model,
        dataset=dataset,
        size=size,
        seed=seed,
        data_root=data_root,
        cache_dir=cache_dir,
    )
    fixed: dict = {"task": "vqa"}
    if size == "full":
        fixed |= {"model_args": {"pretrained": pretrained}, "task_args": {"lm": lm}, "train": {"max_epochs": 0}}
    try:
        cfg = flags.build(fixed)
        check_run(cfg, writes_results=False)
        vqa_model = load_vqa_model(cfg)
        pixels = vqa_model.retrieval.image_transform()(load_image(image))[None]
    except (ConfigError, DataError, UnknownNameError) as e:
        raise _fail(str(e)) from None
    vqa_model.eval()
    typer.echo(vqa_model.generate(pixels, [question])[0])


@app.command()
def regress(
    subset: Annotated[
        str | None, typer.Option(help="Comma-separated models (default: every registered model).")
    ] = None,
    baseline_dir: Annotated[Path, typer.Option(help="Baseline result files and tolerances.json.")] = Path(
        "results/baseline"
    ),
    tolerances: Annotated[
        Path | None,
        typer.Option(help="Tolerances file (default: <baseline-dir>/tolerances.json, else the shipped one)."),
    ] = None,
    update: Annotated[bool, typer.Option(help="Write the new results as the baseline instead of comparing.")] = False,
    from_results: Annotated[
        Path | None, typer.Option(help="Compare the result files in this folder instead of running the suite.")
    ] = None,
    config: SuiteConfigFileOption = None,
    set_: SuiteSetOption = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Reuse this cache (default: a fresh one: everything is trained).")
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Print every metric (default: headline metrics and every change).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = False,
) -> None:
    """Run the tiny suite and compare its metrics with the baselines; exit 1 on a regression beyond tolerance."""
    _progress_bars(progress)
    from benchmark.config import ConfigError
    from benchmark.regression.compare import compare_results
    from benchmark.regression.suite import results_in, run_suite, suite_models, update_baseline
    from benchmark.regression.tolerances import tolerances_for
    from benchmark.results import ResultFileError
    from benchmark.run_flags import CliConfig
    from benchmark.text_table import text_table
    from datamodules.base import DataError

    try:
        models = suite_models(subset)
        tol = tolerances_for(baseline_dir, tolerances)
        if from_results is not None:
            new = results_in(from_results, models if subset else None)
            if not new:
                raise ConfigError(
                    f"--from-results: no result files{' of ' + subset if subset else ''} in {from_results}"
                )
        else:
            new = run_suite(
                models,
                CliConfig(config=config, sets=tuple(set_ or ())).layers(),
                cache_dir=cache_dir,
                progress=progress,
                echo=typer.echo,
            )
        if update:
            for path in update_baseline(new, baseline_dir):
                typer.echo(f"wrote {path}")
            return
        comparison = compare_results(new, baseline_dir, tol)
    except (ConfigError, DataError, ResultFileError, UnknownNameError) as e:
        raise _fail(str(e)) from None
    if comparison.missing_baselines:
        raise _fail(
            f"no baseline in {baseline_dir} for {', '.join(comparison.missing_baselines)}; create it from a "
            f"quiet machine with `bench regress --update --baseline-dir {baseline_dir}` (same options) and commit it"
        )
    rows = [
        [r.run.removesuffix(".json"), r.key, r.old, r.new, r.delta, r.tolerance, r.status]
        for r in comparison.shown(show_all)
    ]
    typer.echo(text_table(["Run", "Metric", "Old", "New", "Delta", "Tolerance", "Status"], rows))
    for note in comparison.notes:
        typer.echo(f"note: {note}")
    bad = comparison.regressions
    typer.echo(
        f"{len(comparison.rows)} metrics of {len(new)} run(s) compared with {baseline_dir} "
        f"(tolerances: {tol.source}): {len(bad)} regression(s)"
    )
    if bad:
        raise typer.Exit(1)


@app.command()
def reproduce(
    results_dir: Annotated[Path, typer.Option(help="Where result files go (and what the report reads).")] = Path(
        "results"
    ),
    out_dir: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("reports"),
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache for data, checkpoints, logs (default $INSTRUCTSEE_CACHE or ~/.cache/instructsee-bench)."
        ),
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option(help="Keep a result file that already holds its step's config.")
    ] = True,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these steps: model names, ablation names, <ablation>:<arm>, report (repeatable or comma-separated)."
        ),
    ] = None,
    config: SuiteConfigFileOption = None,
    set_: SuiteSetOption = None,
    retrain: Annotated[bool, typer.Option(help="Train even if a checkpoint is cached.")] = False,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of the report.")] = 1000,
    progress: Annotated[bool, typer.Option(help="Show Lightning's progress bars.")] = False,
    seeds: Annotated[
        int,
        typer.Option(
            help="Size tiny: run the models and ablation arms the claims compare at N seeds (the run seed and the N - 1 after it, 1-20); the claims report gives each claim at each seed and across seeds."
        ),
    ] = 1,
    size: Annotated[
        str,
        typer.Option(
            help="tiny (every model trained here on SynthScenes) or full (the paper's rows on the real datasets under --data-root, from pretrained checkpoints, with the full-size recipes)."
        ),
    ] = "tiny",
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="Size full: the folder holding coco/, medpix/ (or MedPix-2-0/) and rsicap/; absent ones are skipped."
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            help="Size full: only these models (repeatable or comma-separated; default: every registered model)."
        ),
    ] = None,
    pretrained_blip2: Annotated[
        str,
        typer.Option(
            help="Size full: hub id or local path of the BLIP-2 checkpoint of blip2, ours, dynamicvit and crossget (local files / HF cache only)."
        ),
    ] = "Salesforce/blip2-itm-vit-g",
    pretrained_clip: Annotated[
        str, typer.Option(help="Size full: hub id or local path of the CLIP checkpoint (local files / HF cache only).")
    ] = "openai/clip-vit-large-patch14",
    gpu_costs: Annotated[
        Path | None,
        typer.Option(
            help="Size full: measured full-size throughputs for the GPU-hour estimates (default: results/gpu/gpu_costs.json of the suite)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the plan (size full: with split sizes and GPU-hour estimates) and run nothing.")
    ] = False,
) -> None:
    """Every registered model and every ablation arm (tiny, SynthScenes; or full, real datasets), then the report; exit 1 if a step failed."""
    _progress_bars(progress)
    from benchmark.config import ConfigError
    from benchmark.reporting.options import ReportOptions, ReportOptionsError
    from benchmark.reproduce.execute import execute_plan, failed, summary
    from benchmark.reproduce.plan import Plan, build_plan
    from benchmark.reproduce.steps import RunSettings
    from benchmark.run_flags import CliConfig
    from datamodules.base import DataError

    try:
        overrides = CliConfig(config=config, sets=tuple(set_ or ())).layers()
        plan: Plan
        if size == "full":
            from benchmark.reproduce.full_cli import full_plan

            if seeds != 1:
                raise ConfigError("--seeds: only with --size tiny (a full-size run is one seed)")

            plan = full_plan(
                overrides,
                data_root=data_root,
                models=models or [],
                pretrained_blip2=pretrained_blip2,
                pretrained_clip=pretrained_clip,
                gpu_costs=gpu_costs,
                results_dir=results_dir,
                out_dir=out_dir,
                cache_dir=cache_dir,
                only=only or [],
                report=ReportOptions(n_boot=bootstrap),
            )
        elif size != "tiny":
            raise ConfigError(f"--size must be tiny or full, got {size!r}")
        else:
            given = [
                flag
                for flag, value in (("--data-root", data_root), ("--models", models), ("--gpu-costs", gpu_costs))
                if value
            ]
            if given:
                raise ConfigError(f"{', '.join(given)}: only with --size full")
            plan = build_plan(
                overrides,
                results_dir=results_dir,
                out_dir=out_dir,
                cache_dir=cache_dir,
                only=only or [],
                report=ReportOptions(n_boot=bootstrap),
                seeds=seeds,
            )
    except (ConfigError, ReportOptionsError, UnknownNameError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"bench reproduce: {plan.describe()}")
    settings = RunSettings(retrain=retrain, skip_existing=skip_existing, progress=progress)
    if dry_run:
        from benchmark.reproduce.full_cli import dry_run_lines

        try:
            lines = dry_run_lines(plan, settings)
        except (ConfigError, DataError, UnknownNameError) as e:
            raise _fail(str(e)) from None
        for line in lines:
            typer.echo(line)
        return
    records = execute_plan(plan, settings, echo=typer.echo)
    typer.echo(summary(records))
    if failed(records):
        raise typer.Exit(1)


@app.command(name="list")
def list_names() -> None:
    """List the registered models and datasets."""
    for kind, reg in (("models", MODELS), ("datasets", DATASETS)):
        typer.echo(f"{kind}:")
        for name in reg.names():
            typer.echo(f"  {name:<10} {reg.entry(name).description}")


def main() -> None:
    from benchmark.quiet import install

    install()
    app()


if __name__ == "__main__":
    main()
