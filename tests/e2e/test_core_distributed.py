"""ZeRO stages and world sizes agree; ZeRO-3 shards the frozen LM; the optimizer never sees it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.support.core_fixtures import tiny_config_dict

from tests.support.dist_util import REPO, check, torchrun

CASES = [(0, 1), (2, 1), (3, 1), (0, 2), (2, 2), (3, 2)]


@pytest.fixture(scope="module")
def runs(tiny_lm_dir, tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    tiny_run_config = out / "tiny.yaml"
    tiny_run_config.write_text(yaml.safe_dump(tiny_config_dict(tiny_lm_dir, tiny_shards, out / "run")))
    results = {}
    for stage, nproc in CASES:
        path = out / f"s{stage}_w{nproc}"
        proc = torchrun(nproc, [str(REPO / "tests" / "support" / "dist_worker.py"), str(tiny_run_config), str(path),
                                f"deepspeed.stage={stage}", f"train.run_dir={out / f'run_{stage}_{nproc}'}"])
        check(proc)
        results[(stage, nproc)] = [json.loads((out / f"s{stage}_w{nproc}.rank{r}.json").read_text())
                                   for r in range(nproc)]
    return results


def test_same_loss_and_prefix_gradient_across_stages_and_ranks(runs):
    ref = runs[(0, 1)][0]
    ref_grads = {k: np.array(v) for k, v in ref["grads"].items()}
    assert ref_grads and all(v is not None for v in ref["grads"].values())
    assert not any(k.startswith("lm.") for k in ref_grads)
    for (stage, nproc), ranks in runs.items():
        for r in ranks:
            assert abs(r["loss"] - ref["loss"]) < 1e-5, (stage, nproc, r["loss"], ref["loss"])
            assert set(r["grads"]) == set(ref_grads)
            for name, g in r["grads"].items():
                np.testing.assert_allclose(np.array(g), ref_grads[name], atol=1e-5, rtol=1e-4,
                                           err_msg=f"stage {stage} x {nproc} ranks: {name}")


def test_zero3_two_ranks_hold_half_the_lm_each_and_never_materialise_it(runs):
    ranks = runs[(3, 2)]
    total = ranks[0]["lm_total_numel"]
    for r in ranks:
        assert 0.45 * total <= r["lm_local_numel"] <= 0.55 * total, r
        # loading gathered the LM one module at a time, never whole
        assert 0 < r["max_gathered_numel_during_load"] < 0.5 * total, r
    single = runs[(2, 2)][0]
    assert single["lm_local_numel"] == total  # without ZeRO-3 every rank holds all of it


def test_optimizer_never_holds_lm_parameters(runs):
    for ranks in runs.values():
        for r in ranks:
            assert r["lm_params_in_optimizer"] == 0


@pytest.mark.parametrize("kind", ["lexical", "words"])
def test_a_lexical_prefix_under_zero3_matches_one_rank(kind, tiny_lm_dir, tiny_shards, tmp_path):
    """model.prefix_kind=lexical (and words, with its blank slots masked and its slot loss) takes
    its tokens through the LM's embedding module, which ZeRO-3 partitions: two ZeRO-3 ranks give
    the loss and prefix gradients of one rank at stage 0."""
    tiny_run_config = tmp_path / "tiny.yaml"
    tiny_run_config.write_text(yaml.safe_dump(tiny_config_dict(tiny_lm_dir, tiny_shards, tmp_path / "run")))
    results = {}
    for stage, nproc in ((0, 1), (3, 2)):
        path = tmp_path / f"s{stage}_w{nproc}"
        check(torchrun(nproc, [str(REPO / "tests" / "support" / "dist_worker.py"), str(tiny_run_config), str(path),
                               f"deepspeed.stage={stage}", f"model.prefix_kind={kind}", "model.prefix_length=6",
                               f"train.run_dir={tmp_path / f'run_{stage}_{nproc}'}"]))
        results[stage] = [json.loads((tmp_path / f"s{stage}_w{nproc}.rank{r}.json").read_text()) for r in range(nproc)]
    ref = results[0][0]
    assert {"prefix.free.proj.2.weight", "prefix.log_sharpness"} <= set(ref["grads"])
    assert not any(k.startswith("lm.") for k in ref["grads"])
    assert np.abs(np.array(ref["grads"]["prefix.free.proj.2.weight"])).sum() > 0
    # words' slot loss gives gradients of ~10, and prefix.free.scale's is zero by construction (the
    # cosine to the vocabulary does not see the free vectors' scale): its value is float32 rounding
    # of terms that size, so the absolute tolerance scales with the largest gradient
    atol = 1e-5 * max(1.0, max(float(np.abs(np.array(g)).max()) for g in ref["grads"].values()))
    for r in results[3]:
        assert abs(r["loss"] - ref["loss"]) < 1e-5 and r["lm_params_in_optimizer"] == 0
        for name, g in r["grads"].items():
            np.testing.assert_allclose(np.array(g), np.array(ref["grads"][name]), atol=atol, rtol=1e-4, err_msg=name)
