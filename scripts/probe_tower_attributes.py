"""What does the frozen tiny vision tower see of a SynthScenes object? (issue 28: why the ITM stays weak)

A trained tiny checkpoint of the BLIP2 family (``--model blip2`` or ``ours``) is loaded with its
run's DataModule, which holds its frozen vision tower's tokens of ``--n-train`` train and
``--n-val`` val images (the cached features, computed now if absent). Each of a scene's 3 x 3
grid cells is read from the patch tokens that cover it (the patch grid must be a multiple of 3:
at the tiny 48 px and patch 8, 2 x 2 patches of 128 values, concatenated). One linear probe per attribute (softmax regression, shared by the nine cells,
features standardised on train, Adam, L2) is trained on the train cells and scored on the val
cells: the accuracy on occupied cells beside the majority class's, and empty-vs-occupied
accuracy. The same with a two-layer probe (one hidden layer of 512, GELU): an attribute that
only the two-layer probe reads is in the tokens, but not linearly. Nothing here is timed.

Example::

    python scripts/probe_tower_attributes.py --model blip2 \\
        --checkpoint <cache>/checkpoints/blip2__synthetic__tiny__<hash>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.config import default_cache_dir  # noqa: E402
from benchmark.store import checkpoint_with_data  # noqa: E402
from datamodules.synthetic.scene import Scene  # noqa: E402
from datamodules.synthetic.vocabulary import COLUMNS, OBJECT_COLOURS, ROWS, SHAPES, SIZES  # noqa: E402

ATTRIBUTES = {"shape": tuple(SHAPES), "colour": tuple(OBJECT_COLOURS), "size": tuple(SIZES)}


def cell_features(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, 1 + P*P, D]`` tower tokens (CLS first) -> ``[B, 9, (P/3)^2 D]``: each grid cell's
    covering patch tokens, concatenated (cells row-major)."""
    b, n, d = tokens.shape
    side = round((n - 1) ** 0.5)
    if side * side != n - 1 or side % 3:
        raise SystemExit(f"the tower's patch grid must be square and a multiple of 3, got {n - 1} patches")
    k = side // 3
    grid = tokens[:, 1:].reshape(b, 3, k, 3, k, d).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(b, 9, k * k * d)


def cell_labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Per attribute ``[B, 9]``: the index of the cell's object's value, ``len(values)`` if empty."""
    out = {name: torch.full((len(scenes), 9), len(values)) for name, values in ATTRIBUTES.items()}
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            cell = ROWS.index(o.row) * len(COLUMNS) + COLUMNS.index(o.column)
            for name, values in ATTRIBUTES.items():
                out[name][i, cell] = values.index(getattr(o, name))
    return out


def probe_model(kind: str, width: int, classes: int) -> torch.nn.Module:
    if kind == "linear":
        return torch.nn.Linear(width, classes)
    return torch.nn.Sequential(torch.nn.Linear(width, 512), torch.nn.GELU(), torch.nn.Linear(512, classes))


def fit_probe(kind: str, x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 600) -> torch.nn.Module:
    torch.manual_seed(0)
    probe = probe_model(kind, x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    with torch.enable_grad():  # the loaded checkpoint's helpers may leave grad mode off
        for _ in range(steps):
            opt.zero_grad()
            l2 = sum(p.pow(2).sum() for p in probe.parameters())
            (F.cross_entropy(probe(x), y) + 1e-4 * l2).backward()
            opt.step()
    return probe


def tower_tokens(dm, split: str, n: int) -> tuple[torch.Tensor, list[Scene]]:
    """The first ``n`` images of ``split``: their frozen tower tokens, read from the item loader's
    cached table (row i = image i of the split's records), and their scenes."""
    table = dm.item_table(split)
    if table is None:
        raise SystemExit("the checkpoint's model has no cached tower tokens (not of the BLIP2 family?)")
    records = dm.records(split)[:n]
    return table[: len(records)].float(), [Scene.from_json(r.metadata["scene"]) for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="blip2", choices=["blip2", "ours"])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-val", type=int, default=500)
    args = ap.parse_args()
    for name in ("n_train", "n_val"):
        if not 1 <= getattr(args, name) <= 100_000:
            raise SystemExit(f"--{name.replace('_', '-')} must be in [1, 100000], got {getattr(args, name)}")
    _, dm = checkpoint_with_data(args.model, args.checkpoint, args.cache_dir)
    (xtr, str_), (xva, sva) = tower_tokens(dm, "train", args.n_train), tower_tokens(dm, "val", args.n_val)
    xtr, xva = cell_features(xtr).flatten(0, 1), cell_features(xva).flatten(0, 1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    ytr, yva = cell_labels(str_), cell_labels(sva)
    print(f"{args.model}: {len(str_)} train / {len(sva)} val images, {xtr.shape[1]} values per cell")
    for kind, name in ((k, n) for k in ("linear", "two-layer") for n in ATTRIBUTES):
        empty = len(ATTRIBUTES[name])
        a, b = ytr[name].flatten(), yva[name].flatten()
        with torch.no_grad():
            pred = fit_probe(kind, xtr, a, empty + 1)(xva).argmax(1)
        occupied = b != empty
        majority = torch.mode(a[a != empty]).values
        print(
            f"  {kind:<9} {name:<6} accuracy on occupied cells {(pred[occupied] == b[occupied]).float().mean():.3f} "
            f"(majority {(b[occupied] == majority).float().mean():.3f}, {empty} values); "
            f"empty vs occupied {((pred == empty) == ~occupied).float().mean():.3f}"
        )


if __name__ == "__main__":
    main()
