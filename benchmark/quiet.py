"""Third-party messages that tell a ``bench`` user nothing, silenced when the CLI starts.

Each entry is one exact message and the reason it is noise here. Everything else -- the
suite's own output, every other Lightning or transformers warning -- still shows.
"""

from __future__ import annotations

import logging
import re
import warnings

#: Lightning's per-Trainer banners (INFO): one set per Trainer, several Trainers per command
#: (dependencies, feature extraction, fit, test); the device is recorded in every result file
LIGHTNING_INFO = (
    r"GPU available: ",
    r"TPU available: ",
    r"HPU available: ",
    r"💡 Tip: ",  # advertisements for optional Lightning packages
    r"`Trainer\(limit_(train|val|test|predict)_batches=1\.0\)` was configured",  # the default, restated
    r"Loading `train_dataloader` to estimate number of stepping batches",
)
#: the loggers Lightning's ``rank_zero_info`` writes through (pytorch's or fabric's, whichever set it last)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

#: Python warnings: (message regex, why it is noise)
WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "Lightning's own use of a torch API"),
    (r"Found \d+ module\(s\) in eval mode at the start of training", "frozen towers are in eval mode on purpose"),
    (r"You are using a custom batch sampler `RankBatches` for prediction", "the suite's sharding sampler"),
    (r"predict returned None if it was on purpose", "feature extraction writes to its cache file"),
)

#: transformers (``[transformers]`` lines): the suite reads only size, crop, mean and std from an
#: image processor, the same in the PIL and torchvision backends
TRANSFORMERS = {"transformers.utils.import_utils": r"`\w+ImageProcessor` requires torchvision \(not installed\)"}


class _Drop(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def install() -> None:
    """Silence the messages above (idempotent); no third-party module is imported."""
    for name in LIGHTNING_LOGGERS:
        _add(logging.getLogger(name), LIGHTNING_INFO)
    for name, pattern in TRANSFORMERS.items():
        _add(logging.getLogger(name), (pattern,))
    for pattern, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def _add(logger: logging.Logger, patterns: tuple[str, ...]) -> None:
    if not any(isinstance(f, _Drop) for f in logger.filters):
        logger.addFilter(_Drop(patterns))
