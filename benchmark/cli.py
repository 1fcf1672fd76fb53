"""The ``bench`` command line: thin typed functions over library code.

Heavy imports (torch, lightning, transformers) happen inside the commands, so ``bench
--help`` answers at once. Every command is a plain function, callable in-process by the
tests through ``typer.testing.CliRunner``. Bad input (unknown model or dataset, a bad
option, an absent or malformed dataset) prints one clear message and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from benchmark.registry import DATASETS, MODELS, UnknownNameError

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


def model_defaults(model: str) -> dict:
    """The shipped base config of a model (``benchmark/configs/models/<model>.json``)."""
    from benchmark.config import model_defaults as defaults

    return defaults(model)


@app.command()
def run(
    model: Annotated[str, typer.Option(help=f"Model: {', '.join(MODELS.names())}.")] = "clip",
    dataset: Annotated[str, typer.Option(help=f"Dataset: {', '.join(DATASETS.names())}.")] = "synthetic",
    size: Annotated[str, typer.Option(help="tiny (trained here from scratch) or full (pretrained checkpoint).")] = "tiny",
    tag: Annotated[str, typer.Option(help="Names the result file results/<model>__<dataset>__<tag>.json.")] = "default",
    seed: Annotated[int, typer.Option(help="Seed for data generation, training and evaluation.")] = 0,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (0 = evaluate as is).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: $INSTRUCTSEE_DATA_ROOT/<dataset>).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Hub id or local path of a checkpoint (size full).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file of config overrides.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY.PATH=VALUE (repeatable).")] = None,
    results_dir: Annotated[Path, typer.Option(help="Where result files go.")] = Path("results"),
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache for data, checkpoints, logs (default $INSTRUCTSEE_CACHE or ~/.cache/instructsee-bench).")] = None,
    devices: Annotated[Optional[int], typer.Option(help="Devices per node for Lightning.")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    retrain: Annotated[bool, typer.Option(help="Train even if a checkpoint for this config is cached.")] = False,
    skip_existing: Annotated[bool, typer.Option(help="Skip when the result file already holds this config.")] = False,
    strict: Annotated[bool, typer.Option(help="A missing or unreadable image is an error (default: skipped, counted, listed in the result file).")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train (tiny) or load (full) one model, evaluate it on one dataset, write one result file."""
    for kind, reg, name in (("model", MODELS, model), ("dataset", DATASETS, dataset)):
        if name not in reg:
            raise _fail(str(UnknownNameError(kind, name, reg.names())))
    from benchmark.config import ConfigError, build_run_config, load_override_file, parse_set
    from benchmark.runner import run as run_one
    from datamodules.base import DataError

    cli: dict = {"model": model, "dataset": dataset, "size": size, "tag": tag, "seed": seed,
                 "results_dir": str(results_dir)}
    if cache_dir is not None:
        cli["cache_dir"] = str(cache_dir)
    if epochs is not None:
        cli["train"] = {"max_epochs": epochs}
    if devices is not None or strategy is not None:
        cli.setdefault("train", {}).update({k: v for k, v in (("devices", devices), ("strategy", strategy)) if v is not None})
    if data_root is not None:
        cli["data"] = {"root": str(data_root)}
    if strict:
        cli.setdefault("data", {})["strict"] = True
    if pretrained is not None:
        cli["model_args"] = {"pretrained": pretrained}
    try:
        overrides = [load_override_file(config)] if config else []
        cfg = build_run_config(model_defaults(model), *overrides, cli, parse_set(set_ or []))
        outcome = run_one(cfg, retrain=retrain, skip_existing=skip_existing, progress=progress)
    except (ConfigError, DataError, UnknownNameError) as e:
        raise _fail(str(e)) from None
    if outcome.skipped:
        typer.echo(f"skipped: {outcome.path} already holds this config")
        return
    m = outcome.result["metrics"]  # type: ignore[index]
    keys = [k for k in m if k.split("/")[-1] in ("R@1", "R@5", "R@10", "MRR", "Sim")]
    typer.echo("  ".join(f"{k}={m[k]:.4f}" for k in keys))
    typer.echo(f"wrote {outcome.path} ({outcome.result['timings']['total_s']:.1f} s)")  # type: ignore[index]


@app.command()
def report(
    results_dir: Annotated[Path, typer.Option(help="Folder of result files.")] = Path("results"),
    out_dir: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("reports"),
) -> None:
    """Build reports/results.md from every result file in RESULTS_DIR."""
    from benchmark.reporting.tables import write_report
    from benchmark.results import ResultFileError

    try:
        path = write_report(results_dir, out_dir)
    except ResultFileError as e:
        raise _fail(str(e)) from None
    typer.echo(f"wrote {path}")


data_app = typer.Typer(help="Check the real datasets' local folders.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command(name="check")
def data_check(
    dataset: Annotated[str, typer.Option(help="Dataset: coco, medpix or rsicap.")],
    data_root: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: $INSTRUCTSEE_DATA_ROOT/<dataset>).")] = None,
    options: Annotated[Optional[str], typer.Option(help='Dataset options as JSON, e.g. \'{"train_split": "train_1"}\'.')] = None,
) -> None:
    """Validate a dataset folder: counts per split, missing and unreadable images.

    Exit code 0: all fine; 1: some images missing or unreadable (runs skip them);
    2: the folder or its annotations are not what the dataset expects.
    """
    if dataset not in DATASETS:
        raise _fail(str(UnknownNameError("dataset", dataset, DATASETS.names())))
    from datamodules.base import DataError
    from datamodules.check import check_dataset
    from datamodules.datamodule import DataConfig
    from datamodules.local import LocalDataModule

    cls = DATASETS.get(dataset)
    if not issubclass(cls, LocalDataModule):
        raise _fail(f"dataset {dataset!r} is generated by the suite, not read from a folder: nothing to check")
    if data_root is None:
        import os

        from benchmark.runner import DATA_ROOT_ENV

        env = os.environ.get(DATA_ROOT_ENV)
        data_root = Path(env) / dataset if env else None
    try:
        opts = json.loads(options) if options else {}
        if not isinstance(opts, dict):
            raise DataError("--options must be a JSON object")
        report = check_dataset(cls(DataConfig(root=str(data_root or ""), options=opts)))
    except json.JSONDecodeError as e:
        raise _fail(f"--options is not valid JSON ({e.msg})") from None
    except DataError as e:
        raise _fail(str(e)) from None
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)


@app.command(name="list")
def list_names() -> None:
    """List the registered models and datasets."""
    for kind, reg in (("models", MODELS), ("datasets", DATASETS)):
        typer.echo(f"{kind}:")
        for name in reg.names():
            typer.echo(f"  {name:<10} {reg.entry(name).description}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
