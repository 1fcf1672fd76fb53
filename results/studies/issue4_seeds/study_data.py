"""What the probes of this folder share: the SynthScenes test split in DATA_ROOT (generated there
with the default data options if missing) and a trained `--model ours` checkpoint."""

import torch

from datamodules.base import EvalSet
from datamodules.datamodule import DataConfig
from datamodules.synthetic.datamodule import SyntheticDataModule
from lightning_modules.idq_former import IdqFormerRetrieval


def test_split(root: str, seed: int = 0) -> EvalSet:
    """The test split; ``seed`` (the run's) picks each caption's instruction template."""
    dm = SyntheticDataModule(DataConfig(root=root), seed=seed)
    dm.prepare_data()
    return dm.eval_set("test")


def checkpoint_and_split(checkpoint: str, root: str, seed: int = 0) -> tuple[IdqFormerRetrieval, EvalSet]:
    """The checkpoint in eval mode (2 torch threads) and the test split of its run's seed."""
    torch.set_num_threads(2)
    es = test_split(root, seed)
    return IdqFormerRetrieval.load_checkpoint(checkpoint).eval(), es
