"""Small fixture copies of the real datasets, written in exactly their on-disk formats.

Each writer builds a tiny dataset under a folder with the traps of
``/work/shared/reference/datasets.md``: COCO ``raw`` captions ending in a space, images
with 6 or 7 captions, both packagings; MedPix names without ``.png``, RGBA and grayscale
PNGs of varying sizes, ``"Figure Part": null``, ``CT``/``MR`` in the descriptions but
``TAC``/``MRI`` in Case_topic.json, one-word captions, optional keys absent; RSICap string
ids, grayscale images, RSIEval with an empty question. Images are small so tests stay fast.
Each writer returns what a reader should find (per-split counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = (
    "a man riding a horse",
    "two dogs on a beach",
    "a red bus in the street",
    "a bowl of fruit",
    "people playing frisbee",
    "a cat sleeping on a sofa",
    "a plane in the blue sky",
    "a boat on a lake",
)


def natural_image(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise and a few blocks: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            (x / w) * 200 + rng.uniform(0, 55),
            (y / h) * 180 + rng.uniform(0, 75),
            ((x + y) / (w + h)) * 160 + rng.uniform(0, 95),
        ],
        axis=-1,
    )
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        base[y0 : y0 + h // 4, x0 : x0 + w // 4] = rng.uniform(0, 255, size=3)
    base += rng.normal(0, 6, size=base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, size: tuple[int, int], seed: int, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(natural_image(*size, seed)).save(path, "JPEG", quality=quality)


def write_png(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(natural_image(*size, seed))
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(np.full(size[::-1], 200, dtype=np.uint8)))
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path, "PNG")


def _captions(seed: int, n: int) -> list[str]:
    return [f"{WORDS[(seed + k) % len(WORDS)]} number {seed} view {k}" for k in range(n)]


# -- COCO ---------------------------------------------------------------------------------
COCO_SPLITS = {"train": 6, "restval": 3, "val": 3, "test": 5}


def _coco_images() -> list[tuple[str, str, int, int]]:
    """(karpathy split, folder, coco id, number of captions) per image."""
    out, cid = [], 100
    for split, n in COCO_SPLITS.items():
        for i in range(n):
            folder = "train2014" if split == "train" else "val2014"
            n_caps = 5 + (i % 3)  # 5, 6 or 7 captions: never assume 5
            out.append((split, folder, cid, n_caps))
            cid += 7
    return out


def coco_file(folder: str, cid: int) -> str:
    return f"COCO_{folder}_{cid:012d}.jpg"


def write_coco_karpathy(root: Path, image_size: tuple[int, int] = (40, 30)) -> dict[str, tuple[int, int]]:
    """Karpathy's dataset_coco.json + train2014/ val2014/. Returns {split: (images, captions)}."""
    images, sentid = [], 0
    for imgid, (split, folder, cid, n_caps) in enumerate(_coco_images()):
        name = coco_file(folder, cid)
        write_jpeg(root / folder / name, image_size, cid)
        sentences = []
        for text in _captions(cid, n_caps):
            raw = text + " " if sentid % 2 == 0 else text  # raw often ends in a space
            sentences.append({"tokens": text.split(), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append(
            {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sentences],
                "filename": name,
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": cid,
            }
        )
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return _coco_counts()


def _coco_counts() -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {"train": [0, 0], "val": [0, 0], "test": [0, 0]}
    for split, _, _, n_caps in _coco_images():
        c = counts["train" if split == "restval" else split]
        c[0] += 1
        c[1] += n_caps
    return {k: (v[0], v[1]) for k, v in counts.items()}


def write_coco_lavis(root: Path, image_size: tuple[int, int] = (40, 30)) -> dict[str, tuple[int, int]]:
    """LAVIS/BLIP annotations/coco_karpathy_{train,val,test}.json + images/. Same content."""
    train, evals = [], {"val": [], "test": []}
    for split, folder, cid, n_caps in _coco_images():
        image = f"{folder}/{coco_file(folder, cid)}"
        write_jpeg(root / "images" / image, image_size, cid)
        caps = [c + " " if k == 0 else c for k, c in enumerate(_captions(cid, n_caps))]
        if split in ("train", "restval"):
            train.extend({"caption": c, "image": image, "image_id": f"coco_{cid}"} for c in caps)
        else:
            evals[split].append({"image": image, "caption": caps})
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "coco_karpathy_train.json").write_text(json.dumps(train))
    for split, entries in evals.items():
        (ann / f"coco_karpathy_{split}.json").write_text(json.dumps(entries))
    return _coco_counts()


# -- MedPix 2.0 ---------------------------------------------------------------------------
MEDPIX_CASES = {  # split -> case ids
    "train_1": ["MPX1001", "MPX1002", "MPX1003"],
    "train_2": ["MPX1004", "MPX1005"],
    "dev": ["MPX1006", "MPX1007"],
    "test": ["MPX1008", "MPX1009", "MPX1010"],
}
LOCATIONS = [
    ("Genitourinary", "Reproductive and Urinary System"),
    ("Brain and Neuro", "Head"),
    ("Chest, Pulmonary", "Thorax"),
    ("Gastrointestinal", "Abdomen"),
    ("Musculoskeletal", "Spine and Muscles"),
]


def _medpix_record(case: str, k: int, n: int) -> dict:
    kind = "MR" if n % 3 == 1 else "CT"
    location, category = LOCATIONS[n % len(LOCATIONS)]
    caption = "Hydrocephalus" if n % 5 == 3 else f"Finding {n} in the {location.lower()} seen on {kind} image {k}.  "
    description = {
        "ACR Codes": "8.-1",
        "Age": str(30 + n),
        "Caption": caption,
        "Figure Part": None if n % 3 else "1A",
        "Modality": "CT - noncontrast" if kind == "CT" else "MR - T2 weighted",
        "Plane": "Axial" if k == 0 else "Coronal",
        "Sex": "male" if n % 2 else "female",
    }
    if n % 4 == 1:
        description.pop("Plane")  # optional keys may be absent
    return {
        "Type": kind,
        "U_id": case,
        "image": f"{case}_synpic{40000 + 10 * n + k}",
        "Description": description,
        "Location": location,
        "Location Category": category,
    }


def write_medpix(root: Path) -> dict[str, tuple[int, int]]:
    """MedPix-2-0/ layout. Returns {medpix split: (images, captions)}."""
    by_split: dict[str, list[dict]] = {}
    cases = []
    n = 0
    for split, uids in MEDPIX_CASES.items():
        for uid in uids:
            recs = [_medpix_record(uid, k, n + k) for k in range(1 + n % 2)]
            n += len(recs)
            by_split.setdefault(split, []).extend(recs)
            cases.append(
                {
                    "U_id": uid,
                    "TAC": [r["image"] for r in recs if r["Type"] == "CT"],
                    "MRI": [r["image"] for r in recs if r["Type"] == "MR"],
                    "Case": {
                        "Title": f"Case {uid}",
                        "History": "h",
                        "Findings": "f",
                        "Differential Diagnosis": "d",
                        "Case Diagnosis": "x",
                    }
                    | ({"Exam": "e"} if n % 2 else {}),
                    "Topic": {"Title": "t", "Disease Discussion": "d", "ACR Code": "8.-1", "Category": "c"},
                }
            )
    by_split["train"] = by_split["train_1"] + by_split["train_2"]
    all_records = [r for s in ("train", "dev", "test") for r in by_split[s]]
    for i, rec in enumerate(all_records):
        mode = ("RGB", "RGBA", "L")[i % 3]  # some PNGs are RGBA, some grayscale
        write_png(root / "images" / f"{rec['image']}.png", (36 + 4 * (i % 4), 28 + 6 * (i % 3)), i, mode)
    (root / "Descriptions.json").write_text(json.dumps(all_records, indent=1))
    (root / "Case_topic.json").write_text(json.dumps(cases, indent=1))
    sd = root / "splitted_dataset"
    sd.mkdir(parents=True, exist_ok=True)
    for split, recs in by_split.items():
        (sd / f"descriptions_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        uids = sorted({r["U_id"] for r in recs})
        (sd / f"data_{split}.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases if c["U_id"] in uids))
    (sd / "uid_list.json").write_text(json.dumps({s: sorted({r["U_id"] for r in v}) for s, v in by_split.items()}))
    return {s: (len(v), len(v)) for s, v in by_split.items()}


# -- RSICap / RSIEval ---------------------------------------------------------------------
N_RSICAP = 40


def write_rsicap(root: Path) -> int:
    """RSGPT dataset/ layout: RSICap/captions.json + images, RSIEval/annotations.json + images.
    Returns the number of RSICap images."""
    annotations = []
    for i in range(N_RSICAP):
        filename = f"P{1000 + i:04d}_{i % 7:04d}.png"
        write_png(root / "RSICap" / "images" / filename, (32 + 8 * (i % 3), 32), i, "L" if i % 4 == 0 else "RGB")
        annotations.append(
            {
                "image_id": str(i),
                "filename": filename,
                "text_input": "Take a look at this image and describe what you notice.",
                "text_output": f"This is an aerial image {i} showing {WORDS[i % len(WORDS)]}.",
            }
        )
    (root / "RSICap" / "captions.json").write_text(json.dumps({"annotations": annotations}, indent=4))
    evals = []
    for i in range(3):
        filename = f"P2{i:03d}_0001.png"
        write_png(root / "RSIEval" / "images" / filename, (32, 32), 100 + i)
        qa = [
            {"question": "Does this image contains trees?", "answer": "Yes.", "type": "presence"},
            {"question": "How many planes are there in this image?", "answer": "Two.", "type": "quantity"},
        ]
        if i == 1:
            qa.append({"question": "", "answer": "", "type": "reasoning"})  # empty questions exist: skipped
        evals.append({"filename": filename, "caption": f"A satellite image {i}.", "qa_pairs": qa})
    (root / "RSIEval").mkdir(parents=True, exist_ok=True)
    (root / "RSIEval" / "annotations.json").write_text(json.dumps({"annotations": evals}, indent=4))
    return N_RSICAP
