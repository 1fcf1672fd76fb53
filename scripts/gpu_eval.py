"""The steps of ``scripts/gpu_eval_check.sh``: the full-size COCO-5k evaluation on a GPU (issue 24).

Three subcommands, each run in its own process by the shell script:

* ``prepare``: writes a random-weight ``Blip2ForImageTextRetrieval`` at ``--scale`` (full:
  the layout of ``Salesforce/blip2-itm-vit-g``; tiny: the same structure, small) with its
  tokenizer and image processor (``scripts/random_checkpoints.py``), and a COCO-Karpathy
  folder in Karpathy's format with ``--n-test`` test images of ``--captions`` captions each
  (``scripts/random_coco.py``). Records sizes and wall times in ``<out>/prepare.json``.
* ``run``: runs one ``bench run`` *in this process* (the arguments after ``--``), then
  records its exit code, its wall time from before ``torch`` is imported to the end, and the
  CUDA caching allocator's peaks over the whole run (``torch.cuda.max_memory_allocated`` /
  ``max_memory_reserved``: tensors only, without the CUDA context nor memory other libraries
  take outside the allocator; null on a CPU) in ``<out>/runs/<name>.json``.
* ``summary``: ``<out>/summary.md`` (and ``summary.json``): the set-up stages, then one table
  row per run: its wall time against the target (default 900 s: issue 24 asks for the whole
  COCO-5k evaluation, ``k_test = 128`` re-ranking included, in at most 15 minutes on one
  H100-class GPU), the stage timings of its result file, peak memory, R@1.

All files are written atomically. ``run`` never raises on a failed ``bench run``: the
failure is recorded (exit code, error) and the shell script goes on.
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # before torch and the suite are imported: a run's wall time includes them

import argparse  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from gpu_records import read_json, write_json  # noqa: E402
from random_checkpoints import SCALES, folder_bytes, write_blip2  # noqa: E402
from random_coco import CocoSpec, vocabulary, write_coco  # noqa: E402

from benchmark.atomic import atomic_write_text  # noqa: E402
from benchmark.cli import main as bench_main  # noqa: E402
from benchmark.config import from_dict  # noqa: E402
from benchmark.registry import MODELS  # noqa: E402
from benchmark.reporting.escape import markdown_inline  # noqa: E402

TARGET_S = 900.0
#: per-stage timings of a result file shown in the summary (seconds), in this order
STAGES = (
    ("encode_images_s", "encode images"),
    ("encode_texts_s", "encode texts"),
    ("score_and_rank_s", "score + rank (ITM re-ranking)"),
    ("features_test_extract_s", "feature extraction"),
    ("prepare_data_s", "prepare data"),
    ("evaluate_s", "evaluate"),
    ("measure_s", "measure"),
)


# -- prepare ------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work)
    record: dict = {"scale": args.scale, "device": device}
    t = time.perf_counter()
    spec = CocoSpec(n_test=args.n_test, captions_per_image=args.captions, image_size=args.image_size, seed=args.seed)
    record["dataset"] = write_coco(work / "coco", spec, workers=args.workers)
    record["dataset"]["path"] = str(work / "coco")
    record["generate_s"] = time.perf_counter() - t
    print(
        f"[gpu_eval] dataset: {record['dataset']['images']} images, {record['dataset']['test_captions']} test "
        f"captions, {record['dataset']['bytes'] / 1e6:.1f} MB in {record['generate_s']:.1f} s "
        f"({record['dataset']['workers']} workers)",
        flush=True,
    )
    t = time.perf_counter()
    record["checkpoint"] = write_blip2(
        work / "blip2", SCALES[args.scale], device, save_dtype=args.save_dtype, vocab_texts=vocabulary()
    )
    record["model_save_s"] = time.perf_counter() - t
    record["checkpoint"] |= {"path": str(work / "blip2"), "bytes": folder_bytes(work / "blip2")}
    print(
        f"[gpu_eval] checkpoint: {record['checkpoint']['parameters'] / 1e6:.1f} M parameters, "
        f"{record['checkpoint']['bytes'] / 1e9:.2f} GB ({args.save_dtype}) in {record['model_save_s']:.1f} s",
        flush=True,
    )
    write_json(Path(args.out) / "prepare.json", record)
    return record


# -- run ----------------------------------------------------------------------------------
def _peaks() -> dict:
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {"peak_allocated_mb": None, "peak_reserved_mb": None}
    return {
        "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
        "device_name": torch.cuda.get_device_name(),
    }


def run_bench(name: str, bench_args: Sequence[str], out: Path, result_file: str | None = None) -> dict:
    """``bench <bench_args>`` in this process; the record of ``<out>/runs/<name>.json``."""
    argv, rc, error = ["bench", *bench_args], 0, None
    saved = sys.argv
    sys.argv = argv
    try:
        bench_main()
    except SystemExit as e:  # click exits with the command's code
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # a crash: recorded, the script goes on  # noqa: BLE001
        rc, error = 1, "".join(traceback.format_exception_only(type(e), e)).strip()
        traceback.print_exc()
    finally:
        sys.argv = saved
    record = {
        "name": name,
        "argv": argv,
        "rc": rc,
        "error": error,
        "wall_s": time.perf_counter() - _START,
        "wall_from": "interpreter start of this helper, before torch is imported",
        "result_file": result_file,
        "peak_memory_method": "torch.cuda.max_memory_allocated / max_memory_reserved over the whole "
        "bench run in this process (PyTorch's caching allocator; without the "
        "CUDA context)",
    } | _peaks()
    write_json(out / "runs" / f"{name}.json", record)
    print(
        f"[gpu_eval] {name}: rc {rc}, {record['wall_s']:.1f} s, peak allocated {record['peak_allocated_mb']} MB",
        flush=True,
    )
    return record


# -- summary ------------------------------------------------------------------------------
def _k_test(result: dict) -> int | None:
    """The re-ranking depth the run used (the model config's ``k``: ``k_test`` or its size default)."""
    try:
        cfg = from_dict(MODELS.get(result["model"]).Config, result["model_config"], "model_args")
    except Exception:  # noqa: BLE001 - a summary never fails on an odd file
        return None
    return getattr(cfg, "k", None)


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_row(run: dict, target_s: float) -> dict:
    """One table row: the run record and its result file's figures."""
    result = read_json(Path(run["result_file"])) if run.get("result_file") else None
    ok = run["rc"] == 0 and result is not None
    timings = (result or {}).get("timings", {})
    metrics = (result or {}).get("metrics", {})
    cfg = (result or {}).get("config", {})
    row = {
        "model": run["name"],
        "rc": run["rc"],
        "completed": ok,
        "wall_s": run["wall_s"],
        "verdict": ("PASS" if run["wall_s"] <= target_s else "FAIL") if ok else "CRASH",
        "total_s": timings.get("total_s"),
        "stages": {k: timings.get(k) for k, _ in STAGES},
        "peak_allocated_mb": run.get("peak_allocated_mb"),
        "peak_reserved_mb": run.get("peak_reserved_mb"),
        "t2i_R@1": metrics.get("t2i/R@1"),
        "i2t_R@1": metrics.get("i2t/R@1"),
        "k_test": _k_test(result) if result else None,
        "n_images": ((result or {}).get("provenance") or {}).get("n_gallery_images"),
        "n_queries": ((result or {}).get("provenance") or {}).get("n_queries"),
        "eval": cfg.get("eval"),
        "error": run.get("error"),
    }
    return row


def summary(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    prep = read_json(out / "prepare.json") or {}
    runs = [r for r in (read_json(p) for p in sorted((out / "runs").glob("*.json"))) if r]
    order = {n: i for i, n in enumerate(args.order.split(","))} if args.order else {}
    runs.sort(key=lambda r: (order.get(r["name"], len(order)), r["name"]))
    rows = [run_row(r, args.target_s) for r in runs]
    stages = _read_stage_times(out / "stage_times.tsv")
    versions = (out / "versions.txt").read_text().strip() if (out / "versions.txt").is_file() else "-"
    ds, ck = prep.get("dataset") or {}, prep.get("checkpoint") or {}
    lines = [
        f"# Full-size COCO-5k evaluation on {markdown_inline(args.device_label or '-')}",
        "",
        f"Versions: {markdown_inline(versions)}.",
        (
            f"Data: random COCO-Karpathy stand-in, {ds.get('per_split', {}).get('test', '-')} test images x "
            f"{(ds.get('spec') or {}).get('captions_per_image', '-')} captions "
            f"({(ds.get('spec') or {}).get('image_size', '-')} px JPEGs, {_fmt(ds.get('bytes', 0) / 1e6)} MB), "
            f"written in {_fmt(prep.get('generate_s'))} s by {ds.get('workers', '-')} processes."
        ),
        (
            f"Model: random-weight Blip2ForImageTextRetrieval, scale {prep.get('scale', '-')} "
            f"({_fmt(ck.get('parameters', 0) / 1e6)} M parameters, ViT {ck.get('vision_layers', '-')} layers x "
            f"{ck.get('vision_width', '-')}, {ck.get('image_size', '-')} px; Q-Former {ck.get('qformer_layers', '-')} "
            f"layers, {ck.get('num_query_tokens', '-')} queries), saved as {ck.get('save_dtype', '-')} "
            f"({_fmt(ck.get('bytes', 0) / 1e9, 2)} GB) in {_fmt(prep.get('model_save_s'))} s; ours loads the same folder."
        ),
        "Stage wall times (process, s): "
        + (
            ", ".join(f"{markdown_inline(s)} {v:.1f}" + ("" if rc == 0 else f" (rc {rc})") for s, v, rc in stages)
            or "-"
        )
        + ".",
        f"Run options: {markdown_inline(args.sets.strip() or '(defaults)')}.",
        (
            f"Target: the whole evaluation in at most {args.target_s:.0f} s per model (wall time of the `bench "
            f"run` process from interpreter start, model loading included): PASS / FAIL; CRASH: it did not complete."
        ),
        "Peak memory: torch.cuda.max_memory_allocated (reserved in brackets) over the whole run, in process.",
        "",
    ]
    head = (
        "model",
        "wall s",
        f"target {args.target_s:.0f} s",
        "total s",
        *(label for _, label in STAGES),
        "peak GPU MB",
        "k_test",
        "images / queries",
        "t2i R@1",
        "i2t R@1",
    )
    table = [head]
    for r in rows:
        mem = "-" if r["peak_allocated_mb"] is None else f"{r['peak_allocated_mb']:.0f} ({r['peak_reserved_mb']:.0f})"
        table.append(
            (
                r["model"],
                _fmt(r["wall_s"]),
                r["verdict"],
                _fmt(r["total_s"]),
                *(_fmt(r["stages"][k]) for k, _ in STAGES),
                mem,
                str(r["k_test"] or "-"),
                f"{r['n_images'] or '-'} / {r['n_queries'] or '-'}",
                _fmt(r["t2i_R@1"], 4),
                _fmt(r["i2t_R@1"], 4),
            )
        )
    cells = [[markdown_inline(str(c)) for c in row] for row in table]
    lines += [
        "| " + " | ".join(cells[0]) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(c) + " |" for c in cells[1:]),
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"\n{markdown_inline(r['model'])} failed: {markdown_inline(r['error'])}")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", text)
    report = {"target_s": args.target_s, "prepare": prep, "stages": [list(s) for s in stages], "runs": rows}
    write_json(out / "summary.json", report)
    print(text, flush=True)
    return report


def _read_stage_times(path: Path) -> list[tuple[str, float, int]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            try:
                out.append((parts[0], float(parts[1]), int(parts[2])))
            except ValueError:
                continue
    return out


# -- command line -------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, bench_args = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="write the random checkpoint and the COCO-Karpathy stand-in")
    pp.add_argument("--scale", choices=("full", "tiny"), default="full")
    pp.add_argument("--work", type=Path, required=True, help="where the checkpoint (blip2/) and data (coco/) go")
    pp.add_argument("--out", type=Path, required=True)
    pp.add_argument("--n-test", type=int, default=5000)
    pp.add_argument("--captions", type=int, default=5)
    pp.add_argument("--image-size", type=int, default=256)
    pp.add_argument("--workers", type=int, default=None, help="image-writing processes (default: all CPUs)")
    pp.add_argument(
        "--save-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="stored weight dtype (float32, as the hub file: measured faster to write and load)",
    )
    pp.add_argument("--device", default=None, help="where the random model is initialised (default: cuda if any)")
    pp.add_argument("--seed", type=int, default=0)
    pr = sub.add_parser("run", help="one bench run in this process (its arguments after --)")
    pr.add_argument("--name", required=True)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--result-file", default=None, help="the result file the run writes (read by summary)")
    ps = sub.add_parser("summary", help="write <out>/summary.md")
    ps.add_argument("--out", type=Path, required=True)
    ps.add_argument("--target-s", type=float, default=TARGET_S)
    ps.add_argument("--order", default="blip2,ours", help="row order of the run names")
    ps.add_argument("--device-label", default=None)
    ps.add_argument("--sets", default="", help="the --set options of the runs (shown)")
    args = p.parse_args(argv)
    if bench_args and args.command != "run":
        p.error("arguments after -- are for the run subcommand")
    if args.command == "run" and not bench_args:
        p.error("run needs the bench arguments after --")
    if args.command == "summary" and not args.target_s > 0:
        p.error("--target-s must be > 0")
    return args, bench_args


def main(argv: Sequence[str] | None = None) -> int:
    args, bench_args = parse_args(argv)
    if args.command == "prepare":
        prepare(args)
        return 0
    if args.command == "run":
        run_bench(args.name, bench_args, Path(args.out), args.result_file)
        return 0
    summary(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
