"""``benchmark.quiet``: the listed third-party messages are dropped, everything else still shows."""

from __future__ import annotations

import logging
import warnings

import pytest

from benchmark import quiet


@pytest.fixture
def installed():
    with warnings.catch_warnings():
        quiet.install()
        quiet.install()  # idempotent
        yield
    for name in (*quiet.LIGHTNING_LOGGERS, *quiet.TRANSFORMERS):
        logger = logging.getLogger(name)
        for f in list(logger.filters):
            logger.removeFilter(f)


def test_listed_messages_are_dropped_and_others_kept(installed, caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, quiet._Drop) for f in log.filters) == 1
    log.info("GPU available: False, used: False")
    log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
    log.info("`Trainer(limit_train_batches=1.0)` was configured so 100% of the batches per epoch will be used..")
    log.info("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
    log.info("`Trainer.fit` stopped: `max_epochs=4` reached.")
    logging.getLogger("transformers.utils.import_utils").warning(
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
    )
    logging.getLogger("transformers.utils.import_utils").warning("something else")
    assert [r.getMessage()[:20] for r in caplog.records] == [
        "GPU available but no",
        "`Trainer.fit` stoppe",
        "something else",
    ]
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn(
            "Found 56 module(s) in eval mode at the start of training. This may lead to", UserWarning, stacklevel=1
        )
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use", FutureWarning, stacklevel=1)
        warnings.warn("Found a problem of our own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["Found a problem of our own"]
