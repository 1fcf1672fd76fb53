"""The ``bench`` options that several commands share, as typed ``Annotated`` aliases.

A command declares ``model: ModelOption = "ours"``: the alias carries the type and the help,
the command its own default. Options whose help differs by command stay in the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchmark.registry import DATASETS, MODELS

ModelOption = Annotated[str, typer.Option(help=f"Model: {', '.join(MODELS.names())}.")]
DatasetOption = Annotated[str, typer.Option(help=f"Dataset: {', '.join(DATASETS.names())}.")]
DataFolderOption = Annotated[Path | None, typer.Option(help="Dataset folder.")]
PretrainedOption = Annotated[str | None, typer.Option(help="Hub id or local path of a checkpoint (size full).")]

# the commands of the feedback loop (feedback, serve): one model, one run config
SizeOption = Annotated[str, typer.Option(help="tiny (trained here) or full (pretrained checkpoint).")]
ModelEpochsOption = Annotated[
    int | None,
    typer.Option(help="Training epochs of the model (0 = as is); the models it starts from keep their own."),
]
RunConfigFileOption = Annotated[Path | None, typer.Option(help="JSON file of run-config overrides.")]
RunSetOption = Annotated[list[str] | None, typer.Option("--set", help="Run-config override KEY.PATH=VALUE.")]
FeedbackSetOption = Annotated[
    list[str] | None,
    typer.Option("--feedback-set", help="Feedback override, e.g. refresh.w_ns=0.5, llm.alpha=0.3."),
]
LlmOption = Annotated[
    str, typer.Option(help="Question writer: rules (not an LLM), hf:<hub id or path>, openai:<base url>.")
]
LlmModelOption = Annotated[str | None, typer.Option(help="The model name sent to an openai: server.")]
TrainingProgressOption = Annotated[bool, typer.Option(help="Show progress bars (training).")]

# the commands that run the whole suite (reproduce, regress)
SuiteConfigFileOption = Annotated[
    Path | None, typer.Option(help="JSON file of config overrides, applied on every run.")
]
SuiteSetOption = Annotated[list[str] | None, typer.Option("--set", help="Override KEY.PATH=VALUE on every run.")]
