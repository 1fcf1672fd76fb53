"""DataLoader settings (datamodules/loading.py): auto ``num_workers`` per dataset, its bounds,
pinned memory on a GPU, the runtime learnt from a Trainer, and the config hashes unchanged."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import datamodules.loading as loading
from benchmark.config import ConfigError, RunConfig, build_run_config, data_identity, model_defaults
from datamodules.base import CaptionRecord, DataError, ImageRecord, InstructionTemplates, TrainPairs, collate_indexed
from datamodules.coco import CocoKarpathyDataModule
from datamodules.datamodule import DataConfig
from datamodules.loading import LoaderRuntime, auto_workers, loader_kwargs, resolve_workers
from datamodules.synthetic.datamodule import SyntheticDataModule
from tests.fixtures_real import write_coco_karpathy


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco_karpathy(root)
    return root


def test_num_workers_defaults_to_auto_and_absurd_values_are_config_errors():
    assert DataConfig().num_workers is None
    assert build_run_config(model_defaults("clip")).data.num_workers is None
    for bad in (100000, 65, -1):
        with pytest.raises(ConfigError, match=r"data\.num_workers must be null \(auto\) or an integer in \[0, 64\]"):
            build_run_config(model_defaults("clip"), {"data": {"num_workers": bad}})
    with pytest.raises(ConfigError, match="data.num_workers: expected an integer"):
        build_run_config(model_defaults("clip"), {"data": {"num_workers": 2.5}})
    assert build_run_config(model_defaults("clip"), {"data": {"num_workers": 3}}).data.num_workers == 3


def test_more_than_four_workers_per_cpu_is_refused_when_the_datamodule_is_built(coco_root, monkeypatch):
    monkeypatch.setattr(loading, "usable_cpus", lambda: 2)
    with pytest.raises(DataError, match=r"data\.num_workers=9 .*\(2 CPUs here, so at most 8\)"):
        CocoKarpathyDataModule(DataConfig(root=str(coco_root), num_workers=9))
    assert CocoKarpathyDataModule(DataConfig(root=str(coco_root), num_workers=8)).num_workers == 8


def test_auto_rule():
    # disk-read data: the node's CPUs split among its processes, one left to the main process, at most 8
    assert [auto_workers(LoaderRuntime(), cpus) for cpus in (1, 2, 4, 16, 128)] == [0, 1, 3, 8, 8]
    assert auto_workers(LoaderRuntime("cuda", processes_per_node=8), 16) == 1
    assert auto_workers(LoaderRuntime("cuda", processes_per_node=4), 64) == 8
    # generated in-memory data: always 0
    assert resolve_workers(None, False, LoaderRuntime(), 64) == 0
    assert resolve_workers(0, True, LoaderRuntime(), 64) == 0 and resolve_workers(5, False, LoaderRuntime(), 2) == 5


def test_loader_kwargs_pin_memory_on_cuda_only_and_prefetch_with_workers():
    assert loader_kwargs(0, LoaderRuntime()) == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert loader_kwargs(4, LoaderRuntime("cuda")) == {
        "num_workers": 4,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": 2,
    }
    assert loader_kwargs(2, LoaderRuntime("mps"))["pin_memory"] is False
    with pytest.raises(ValueError, match="processes_per_node"):
        LoaderRuntime("cuda", 0)


def test_synthetic_loads_in_process_as_before(tmp_path):
    dm = SyntheticDataModule(
        DataConfig(root=str(tmp_path), batch_size=4, options={"n_train": 12, "n_val": 4, "n_test": 8})
    )
    dm.set_transform(lambda im: torch.zeros(3, 4, 4))
    dm.set_runtime(LoaderRuntime("cuda", 1))
    assert dm.num_workers == 0
    dm.set_runtime(None)  # the CPU: the DataLoader of before auto (0 workers, nothing pinned)
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (0, False, False)
    assert dm.loader_settings() == {"num_workers": 0, "pin_memory": False}


def test_real_data_loaders_get_auto_workers_and_pinned_memory_on_a_gpu(coco_root, monkeypatch):
    monkeypatch.setattr(loading, "usable_cpus", lambda: 16)
    dm = CocoKarpathyDataModule(DataConfig(root=str(coco_root), batch_size=4))
    dm.set_transform(lambda im: torch.zeros(3, 4, 4))
    assert dm.num_workers == 8 and dm.loader_settings() == {"num_workers": 8, "pin_memory": False}
    dm.set_runtime(LoaderRuntime("cuda", processes_per_node=4))
    loader = dm.train_dataloader()
    settings = (loader.num_workers, loader.pin_memory, loader.persistent_workers, loader.prefetch_factor)
    assert settings == (3, True, True, 2)
    for q in (dm.query_dataloader(), dm.gallery_dataloader()):
        assert (q.num_workers, q.pin_memory) == (3, True)
    explicit = CocoKarpathyDataModule(DataConfig(root=str(coco_root), num_workers=0))
    explicit.set_runtime(LoaderRuntime("cuda"))
    explicit.set_transform(lambda im: torch.zeros(3, 4, 4))
    g = explicit.gallery_dataloader()
    assert (g.num_workers, g.pin_memory, g.persistent_workers) == (0, True, False)


def test_runtime_comes_from_the_attached_trainer_when_not_set(coco_root):
    dm = CocoKarpathyDataModule(DataConfig(root=str(coco_root)))
    assert dm.runtime == LoaderRuntime()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    assert LoaderRuntime.of_trainer(trainer) == LoaderRuntime("cpu", 1)
    dm.trainer = trainer
    assert dm.runtime == LoaderRuntime("cpu", 1)
    dm.set_runtime(LoaderRuntime("cuda", 2))  # the runner's explicit setting wins
    assert dm.runtime == LoaderRuntime("cuda", 2)


def test_auto_keeps_the_config_hashes_of_the_former_default():
    base = build_run_config(model_defaults("ours"))
    zero = build_run_config(model_defaults("ours"), {"data": {"num_workers": 0}})
    two = build_run_config(model_defaults("ours"), {"data": {"num_workers": 2}})
    assert base.config_hash() == zero.config_hash() != two.config_hash()
    assert base.training_hash() == zero.training_hash() == two.training_hash()  # not a training setting
    assert data_identity({"root": "x", "num_workers": None}) == {"num_workers": 0}
    assert isinstance(base, RunConfig)


def test_workers_would_change_the_training_draws():
    """Why auto is 0 on SynthScenes: in a worker, TrainPairs draws captions and templates from
    the worker's generator, not the main process's, so the run is another one."""
    records = [ImageRecord(str(i), f"{i}.png", tuple(CaptionRecord(f"c{i}-{k}") for k in range(5))) for i in range(32)]
    templates = InstructionTemplates(("A {caption}", "B {caption}", "C {caption}"))

    class InMemory(TrainPairs):
        def _image(self, i):
            return torch.full((1,), float(i))

    def texts(workers: int) -> list[str]:
        L.seed_everything(0, workers=True, verbose=False)
        loader = DataLoader(
            InMemory(records, lambda im: im, templates),
            batch_size=8,
            shuffle=True,
            num_workers=workers,
            collate_fn=collate_indexed,
        )
        return [t for batch in loader for t in batch[2]]

    assert texts(0) == texts(0)  # reproducible in process
    assert texts(1) != texts(0)
