"""``bench data check``: validate a real dataset's folder and count what it holds.

:func:`check_dataset` reads every split's annotations through the same code as a run (so a
layout or annotation problem raises the same :class:`~datamodules.base.DataError`), checks
every image once (missing / unreadable; verdicts cached like a run's, see
``datamodules/image_checks.py``), and returns counts per split plus dataset-specific
lines (MedPix's Descriptions.json and Case_topic.json, RSIEval's QA pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datamodules.datamodule import SPLITS
from datamodules.image_checks import check_images
from datamodules.local import LocalDataModule


@dataclass
class SplitCheck:
    split: str
    source: str  # the dataset's own name for the split (MedPix: dev for val)
    n_images: int
    n_captions: int
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class DatasetCheck:
    dataset: str
    root: str
    layout: str
    splits: list[SplitCheck]
    extra: list[tuple[str, bool]]

    @property
    def ok(self) -> bool:
        return all(not s.missing and not s.unreadable for s in self.splits) and all(ok for _, ok in self.extra)

    def lines(self, max_listed: int = 20) -> list[str]:
        out = [f"{self.dataset}: {self.root} (layout: {self.layout})"]
        for s in self.splits:
            name = s.split if s.source == s.split else f"{s.split} ({s.source})"
            out.append(
                f"  {name:<16} {s.n_images:>7} images  {s.n_captions:>7} captions  "
                f"{len(s.missing)} missing  {len(s.unreadable)} unreadable"
            )
        for line, ok in self.extra:
            out.append(f"  {line}" if ok else f"  problem: {line}")
        missing = [p for s in self.splits for p in s.missing]
        unreadable = [f"{p}: {why}" for s in self.splits for p, why in s.unreadable]
        for title, items in (("missing images", missing), ("unreadable images", unreadable)):
            if items:
                out.append(f"{title} ({len(items)}):")
                out.extend(f"  {p}" for p in items[:max_listed])
                if len(items) > max_listed:
                    out.append(f"  ... and {len(items) - max_listed} more")
        out.append(self._verdict(bool(missing or unreadable)))
        return out

    def _verdict(self, bad_images: bool) -> str:
        if self.ok:
            return "OK"
        why = ["runs skip these images (or refuse them with --strict)"] if bad_images else []
        failed = sum(not ok for _, ok in self.extra)
        if failed:
            why.append(f"{failed} check{'s' if failed > 1 else ''} above failed")
        return "PROBLEMS FOUND: " + "; ".join(why)


def check_dataset(dm: LocalDataModule, recheck: bool = False) -> DatasetCheck:
    """Check every split of ``dm``'s folder. With the DataModule's image check cache
    (``set_check_cache``) unchanged images keep their cached verdict unless ``recheck``."""
    layout = dm.layout()
    names = dm.check_split_names()
    cache = dm.check_cache()
    splits = []
    for split in SPLITS:
        records = dm.annotated_records(split)
        reasons = check_images([r.path for r in records], cache=cache, reuse=not recheck)
        splits.append(
            SplitCheck(
                split=split,
                source=names.get(split, split),
                n_images=len(records),
                n_captions=sum(len(r.captions) for r in records),
                missing=[str(r.path) for r, why in zip(records, reasons, strict=True) if why == "missing"],
                unreadable=[
                    (str(r.path), why) for r, why in zip(records, reasons, strict=True) if why not in (None, "missing")
                ],
            )
        )
    return DatasetCheck(dm.name, str(dm.root), layout, splits, dm.extra_checks())
