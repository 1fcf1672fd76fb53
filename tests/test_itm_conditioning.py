"""Ours' evaluation-only switch ``itm_conditioning`` (the conditioning ablation): what the ITM pass
is without it, and that the checkpoint store gives both values the same trained weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from benchmark.config import build_run_config, model_defaults
from benchmark.store import (
    checkpoint_dir,
    eval_only_fields,
    model_identity,
    trained_config,
    training_config,
    with_eval_settings,
)
from lightning_modules.blip2 import CONFIG_FILE, Blip2Retrieval
from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
from tests.test_idq_former import NQ, TEXTS, _ours, _pixels, save_blip2_checkpoint


@pytest.fixture(scope="module")
def blip2_checkpoint(tmp_path_factory):
    return save_blip2_checkpoint(tmp_path_factory.mktemp("blip2"))


def _cfg(tmp_path, **model_args):
    own = {"model": "ours", "tag": "t", "cache_dir": str(tmp_path), "results_dir": str(tmp_path)}
    return build_run_config(model_defaults("ours"), own, {"model_args": model_args} if model_args else {})


def test_without_conditioning_the_itm_is_blip2s_pass_over_the_bank_and_ignores_l(blip2_checkpoint):
    m = _ours(blip2_checkpoint).eval()
    with torch.no_grad():
        tokens = m.vision_tokens(_pixels(4))
        ids, mask = m.tokenize(TEXTS)
        lengths = torch.tensor([2, 5, 12, 7])
        with_l = m.itm_scores(tokens, ids, mask, lengths)
        m.config = dataclasses.replace(m.config, itm_conditioning=False)
        plain = m.itm_scores(tokens, ids, mask, lengths)
        other_l = m.itm_scores(tokens, ids, mask, torch.tensor([12, 2, 3, 4]))
        n = int(mask.sum(1).max())
        blip2 = m.head.itm_logits(tokens, ids[:, :n], mask[:, :n], query_embeds=m.bank(NQ))[:, 1]
    torch.testing.assert_close(plain, blip2, rtol=0, atol=0)  # BLIP-2's own ITM code on ours' l_init queries
    torch.testing.assert_close(plain, other_l, rtol=0, atol=0)  # the instruction's L plays no part
    assert not torch.allclose(plain, with_l)  # the conditioned pass is another computation


def test_the_switch_is_validated_and_defaults_to_the_papers_pass(blip2_checkpoint):
    assert IdqConfig().itm_conditioning is True
    assert eval_only_fields(IdqFormerRetrieval) == {"itm_conditioning": True}
    assert eval_only_fields(Blip2Retrieval) == {}
    from benchmark.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="itm_conditioning"):
        from_dict(IdqConfig, {"itm_conditioning": "no"}, "model_args")


def test_both_values_share_one_checkpoint_key_and_differ_as_results(tmp_path):
    plain, without = _cfg(tmp_path), _cfg(tmp_path, itm_conditioning=False)
    stated = _cfg(tmp_path, itm_conditioning=True)
    cls = IdqFormerRetrieval
    mc_plain, mc_without = IdqConfig(), IdqConfig(itm_conditioning=False)
    key = checkpoint_dir(plain, None, mc_plain, cls)
    assert checkpoint_dir(without, None, mc_without, cls) == key == checkpoint_dir(stated, None, mc_plain, cls)
    # the key is the one of before the field existed: the field is left out, its default too
    before = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(mc_plain))).items() if k != "itm_conditioning"}
    assert model_identity(cls, mc_plain, training=True) == {k: v for k, v in before.items() if k != "blip2_checkpoint"}
    assert training_config(without, cls).training_hash() == plain.training_hash()
    # as a result, the setting counts where it is not the default
    assert without.config_hash() != plain.config_hash()
    assert model_identity(cls, mc_without) != model_identity(cls, mc_plain)
    assert model_identity(cls, mc_plain) == model_identity(cls, before | {"blip2_checkpoint": None})
    assert trained_config(cls, mc_without) == mc_plain


def test_a_loaded_checkpoint_takes_the_runs_setting(blip2_checkpoint, tmp_path):
    m = _ours(blip2_checkpoint, itm_conditioning=False)  # as if the "without" arm trained it
    m.save_checkpoint(tmp_path / "ck")
    stored = json.loads((tmp_path / "ck" / CONFIG_FILE).read_text())
    assert stored["itm_conditioning"] is False
    loaded = IdqFormerRetrieval.load_checkpoint(tmp_path / "ck")
    assert with_eval_settings(loaded, IdqConfig()).config.itm_conditioning is True
    assert with_eval_settings(loaded, IdqConfig(itm_conditioning=False)).config.itm_conditioning is False
