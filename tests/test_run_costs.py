"""Cost measurement of a run: FLOPs per component (vs torch's counter), spread, failures, result keys."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError, build_run_config, model_defaults
from benchmark.measure.component_flops import component_flops, count_call, measure_component_flops
from benchmark.measure.flops import UnsupportedOpError
from benchmark.measure.probe import model_source, probe
from lightning_modules.blip2 import Blip2Retrieval
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.cost import CostCall, CostModel, CostSample
from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
from lightning_modules.optim import OptimConfig
from tests.tiny_blip2 import save_tiny_blip2

TEXTS = (
    "find images of a red circle",
    "find images of a small blue square left of a big green star",
    "show me a shape",
    "two yellow triangles above a purple circle on a striped background",
)
NQ, LMAX = 8, 12
runner = CliRunner()


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    return save_tiny_blip2(tmp_path_factory.mktemp("blip2"), TEXTS, NQ)


def _ours(blip2_dir, lengths=(2, 5, 12, 7), **kw) -> IdqFormerRetrieval:
    torch.manual_seed(0)
    kw.setdefault("qscaler_encoder", "qformer")
    m = IdqFormerRetrieval.create(
        IdqConfig(
            blip2_checkpoint=str(blip2_dir), l_base=2, l_max=LMAX, l_init=NQ, k_test=3, cache_features=False, **kw
        ),
        OptimConfig(),
    ).eval()
    m.text_lengths = lambda texts: torch.tensor(lengths)[: len(texts)]  # lengths that differ, as a trained QScaler's
    return m


def _models(blip2_dir):
    torch.manual_seed(0)
    clip = ClipRetrieval.create(
        ClipConfig(
            image_size=16,
            patch_size=8,
            vision_width=32,
            vision_layers=1,
            text_width=32,
            text_layers=1,
            heads=2,
            embed_dim=16,
        ),
        OptimConfig(),
        TEXTS,
    ).eval()
    return {"clip": clip, "blip2": Blip2Retrieval.load_checkpoint(blip2_dir).eval(), "ours": _ours(blip2_dir)}


def _sample() -> CostSample:
    return CostSample(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), TEXTS)


def _torch_flops(call: CostCall) -> int:
    """torch.utils.flop_counter (eager; 2 FLOPs per multiply-add), with the CPU sdpa kernel mapped."""
    cpu_sdpa = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: (
            sdpa_flop_count(q, k, v)
        )
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:  # no no_grad: BLIP-2 breaks under it
        call.fn(*call.inputs)
    return counter.get_total_flops() - (_torch_flops(call.minus) if call.minus is not None else 0)


@pytest.mark.parametrize("name", ["clip", "blip2", "ours"])
def test_fvcore_counts_half_of_torch_flop_counter(blip2_dir, name):
    """fvcore counts a multiply-add as one FLOP, torch's counter as two: the ratio is ~2 per component."""
    model = _models(blip2_dir)[name]
    assert isinstance(model, CostModel)
    components = model.cost_components(_sample())
    expected = {
        "clip": {"vision", "text"},
        "blip2": {"vision", "qformer", "text", "rerank"},
        "ours": {"vision", "qformer", "text", "rerank", "qformer_index"},
    }[name]
    assert set(components) == expected
    for component, calls in components.items():
        call = calls[-1]
        ratio = _torch_flops(call) / count_call(call, model)
        assert 1.8 <= ratio <= 2.2, (component, ratio)


def test_dynamic_length_is_averaged_with_its_spread(blip2_dir):
    ours, blip2 = _ours(blip2_dir), Blip2Retrieval.load_checkpoint(blip2_dir).eval()
    m, detail = measure_component_flops(ours, _sample())
    # L differs per instruction: the Q-Former pass and the re-rank pass vary, the vision tower does not
    assert m["gflops/qformer_min"] < m["gflops/qformer"] < m["gflops/qformer_max"] and m["gflops/qformer_std"] > 0
    assert m["gflops/rerank_std"] > 0 and m["gflops/vision_std"] == 0
    # the longest instruction (L = L_max) runs as many queries as the gallery pass
    assert m["gflops/qformer_max"] == pytest.approx(m["gflops/qformer_index"], rel=1e-12)
    parts = ("vision", "qformer", "text", "rerank")
    assert m["gflops/total"] == pytest.approx(sum(m[f"gflops/{c}"] for c in parts), rel=1e-12)
    assert detail["components"]["qformer"] == {"calls": 4, "traces": 4} and detail["total_of"] == list(parts)

    def mean(model, component: str) -> float:
        return component_flops({component: model.cost_components(_sample())[component]}, model)[component].mean

    # at a fixed L = 8 ours' Q-Former pass costs what BLIP2's 8 queries cost (the same Q-Former)
    assert mean(_ours(blip2_dir, lengths=(8, 8, 8, 8)), "qformer") == pytest.approx(mean(blip2, "qformer"), rel=1e-12)
    # without QScaler no instruction pays for predicting its length
    no_qscaler = mean(_ours(blip2_dir, qscaler=False), "text")
    assert no_qscaler == pytest.approx(mean(blip2, "text"), rel=1e-12) and no_qscaler < m["gflops/text"]


def test_full_attention_runs_every_query(blip2_dir):
    m, _ = measure_component_flops(_ours(blip2_dir, attention="full"), _sample())
    assert m["gflops/qformer_std"] == 0 and m["gflops/qformer"] == pytest.approx(m["gflops/qformer_index"], rel=1e-12)


def test_unsupported_matmul_like_op_fails_loudly():
    call = CostCall(lambda a, b: torch.mv(a, b) + 1, (torch.randn(4, 3), torch.randn(3)))
    with pytest.raises(UnsupportedOpError, match="aten::mv"):
        component_flops({"x": [call]})


def test_measurement_settings_are_validated():
    with pytest.raises(ConfigError, match="eval.measurement.repeats"):
        build_run_config(model_defaults("clip"), {"eval": {"measurement": {"repeats": 3}}})
    with pytest.raises(ConfigError, match=r"eval.measurement.query_gallery must be an integer in \[1, 1000000\]"):
        build_run_config(model_defaults("clip"), {"eval": {"measurement": {"query_gallery": 10**7}}})
    with pytest.raises(ConfigError, match="eval.measurement.bogus"):
        build_run_config(model_defaults("clip"), {"eval": {"measurement": {"bogus": 1}}})


SMALL = '{"n_train": 64, "n_val": 16, "n_test": 24}'
SMALL_CLIP = '{"vision_layers": 1, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16}'


def _run_clip(tmp_path, *extra: str) -> dict:
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "clip",
            "--epochs",
            "1",
            "--no-progress",
            "--results-dir",
            str(tmp_path / "results"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--set",
            f"data.options={SMALL}",
            "--set",
            "data.batch_size=32",
            "--set",
            f"model_args={SMALL_CLIP}",
            "--set",
            "eval.measurement.batch_size=8",
            "--set",
            "eval.measurement.flops_texts=4",
            "--set",
            "eval.measurement.query_batch=8",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads((tmp_path / "results" / "clip__synthetic__default.json").read_text())


def test_tiny_run_records_its_costs(tmp_path):
    """The in-process part of the measurement (the fresh-process probe is off here; slow test below)."""
    r = _run_clip(tmp_path, "--set", "eval.measurement.memory=false")
    m, rec = r["metrics"], r["measurement"]
    for key in (
        "gflops/vision",
        "gflops/text",
        "gflops/total",
        "throughput_img_s",
        "throughput_cold_s",
        "throughput_query_s",
    ):
        assert m[key] > 0, key
    assert m["gflops/text_min"] <= m["gflops/text"] <= m["gflops/text_max"] and m["gflops/vision_std"] == 0
    assert m["gflops/total"] == pytest.approx(m["gflops/vision"] + m["gflops/text"])
    assert "gflops/qformer" not in m and "memory_mb" not in m  # CLIP has no Q-Former; memory was not probed
    tp = rec["throughput"]
    assert (tp["batch_size"], tp["warmup_runs"], rec["device"]) == (8, 2, "cpu") and tp["timed_runs"] >= 5
    assert rec["threads"] == tp["torch_threads"] >= 1 and rec["query_throughput"]["gallery_images"] == 24
    assert rec["settings"]["repeats"] == 5 and rec["flops"]["texts"] == 4
    assert rec["precision"] == {"timed_calls": "32-true", "flops_and_probe": "32-true"}  # tiny: the eval's
    assert "multiply-adds" in rec["flops"]["convention"]
    assert tp["cold_call"].startswith("in process") and r["timings"]["measure_s"] > 0


def test_probe_loads_the_model_and_times_its_first_call(tmp_path):
    """The probe's work, run here in-process (the fresh interpreter around it: tests/test_measure.py)."""
    torch.manual_seed(0)
    clip = ClipRetrieval.create(
        ClipConfig(
            image_size=16,
            patch_size=8,
            vision_width=32,
            vision_layers=1,
            text_width=32,
            text_layers=1,
            heads=2,
            embed_dim=16,
        ),
        OptimConfig(),
        TEXTS,
    )
    source = model_source(clip, clip.config, None, tmp_path)  # no checkpoint: saved for the probe
    assert source == {"checkpoint": str(tmp_path / "model"), "class": "lightning_modules.clip:ClipRetrieval"}
    torch.save({"pixels": torch.randn(3, 3, 16, 16), "texts": list(TEXTS[:3])}, tmp_path / "in.pt")
    threads = torch.get_num_threads()
    try:
        probe("clip", source, str(tmp_path / "in.pt"), "cpu", 1, str(tmp_path / "out.json"))
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["cold_first_call_s"] > 0 and out["batch_size"] == 3 and out["threads"] == 1
    assert out["gpu_allocated_mb"] is None


@pytest.mark.slow
def test_tiny_run_probes_memory_in_a_fresh_process(tmp_path):
    r = _run_clip(tmp_path)
    m, rec = r["metrics"], r["measurement"]
    assert 200 < m["memory_mb"] < 20000 and "memory_mb_reserved" not in m  # a fresh interpreter with torch; CPU
    assert rec["memory"]["batch_size"] == 8 and rec["memory"]["peak_rss_mb"] == m["memory_mb"]
    assert rec["throughput"]["cold_call"].startswith("fresh process")
    assert m["throughput_cold_s"] == rec["memory"]["cold_first_call_s"] > 0


def test_torch_threads_pins_and_restores_even_on_error():
    from benchmark.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before  # None: left as it is
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_the_query_time_gallery_is_bounded_at_full_size_and_kept_on_the_host():
    """Re-encoding a 100k gallery at ViT-g would hold 145 GB of tokens: at full size the query-time
    measurement takes the first 5,000 images unless told otherwise, and keeps them in host memory."""
    from benchmark.measure.run_costs import _encode_gallery
    from benchmark.measure.settings import FULL_SIZE_QUERY_GALLERY, MeasureConfig
    from lightning_modules.base import Encoded

    assert MeasureConfig().gallery_for(full_size=False) is None  # tiny: the whole split, as before
    assert MeasureConfig().gallery_for(full_size=True) == FULL_SIZE_QUERY_GALLERY == 5000
    assert MeasureConfig(query_gallery=64).gallery_for(full_size=True) == 64

    class Encoder:
        def encode_images(self, items):
            return Encoded(items.float(), extra={"tokens": items.float()[:, None].expand(-1, 3, -1)})

    batches = [(None, torch.arange(8.0).view(4, 2) + 10 * b) for b in range(3)]
    gallery, n = _encode_gallery(Encoder(), batches, 6)
    assert n == 6 and gallery.emb.shape == (6, 2) and gallery.emb.device.type == "cpu"
    assert torch.equal(gallery.emb[4:], torch.tensor([[10.0, 11.0], [12.0, 13.0]]))


def test_timed_calls_run_in_the_evaluation_precision():
    """At full size on a GPU the evaluation runs bf16-mixed: the timed calls run under the same
    autocast (float32 throughput would misstate what a user's evaluation does)."""
    from benchmark.measure.run_costs import _autocast

    a = torch.ones(2, 2)
    with _autocast("bf16-mixed", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with _autocast("32-true", "cpu"):
        assert (a @ a).dtype == torch.float32
