"""``scripts/probe_tower_attributes.py``: a grid cell is read from exactly the patches that cover
it, and a cell's labels are its object's attributes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.synthetic.scene import Scene
from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_tower_attributes.py"


def _load():
    return load_script(SCRIPT)


def test_cells_read_their_covering_patches_and_objects():
    probe = _load()
    # 6 x 6 patches after CLS, each patch's single value = its row * 10 + column
    patches = torch.tensor([[r * 10 + c for r in range(6) for c in range(6)]], dtype=torch.float32)
    tokens = torch.cat([torch.full((1, 1), -1.0), patches], dim=1)[..., None]  # [1, 37, 1]
    cells = probe.cell_features(tokens)
    assert cells.shape == (1, 9, 4)
    assert cells[0, 0].tolist() == [0, 1, 10, 11]  # top left: patch rows 0-1, columns 0-1
    assert cells[0, 5].tolist() == [24, 25, 34, 35]  # middle right: rows 2-3, columns 4-5
    with pytest.raises(SystemExit, match="multiple of 3"):
        probe.cell_features(torch.zeros(1, 1 + 16, 1))

    obj = {"shape": "star", "colour": "red", "size": "small", "row": "bottom", "column": "center"}
    scene = Scene.from_json(
        {"objects": [obj | {"x": 0.5, "y": 5 / 6}], "background": {"pattern": "plain", "colour": "white"}}
    )
    labels = probe.cell_labels([scene])
    for name, values in probe.ATTRIBUTES.items():
        want = [len(values)] * 9
        want[7] = values.index(obj[name])  # bottom centre
        assert labels[name][0].tolist() == want
