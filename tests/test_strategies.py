"""Every strategy through one suite: ids unique, in the pool, never labelled, exactly the budget."""

from __future__ import annotations

import numpy as np
import pytest

from activepose.config import SelectionConfig, SyntheticConfig, UncertaintyConfig
from activepose.errors import ConfigError, EnvironmentProblem
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.sampling.strategies import (
    STRATEGIES,
    SelectionContext,
    SelectionError,
    UnknownStrategyError,
    check_strategy,
    list_strategies,
    select_batch,
)

from .conftest import tiny_model


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    return load_coco(
        make_synthetic_coco(out, "lsp14", SyntheticConfig(num_images=40, image_size=(64, 64)), seed=11)
    )


@pytest.fixture(scope="module")
def model(pool):
    return tiny_model(pool.skeleton).eval()


def _ctx(pool, model, labelled_ids=(), **kw):
    # One cache for the module: scores and embeddings are computed once, which is the cache's job.
    kw.setdefault("cache_dir", pool.root / "cache")
    kw.setdefault("uncertainty", UncertaintyConfig(input_size=64))
    cfg = SelectionConfig(extractor="pose_backbone", **kw)
    labelled = pool.subset(list(labelled_ids)) if labelled_ids else None
    return SelectionContext(pool, labelled, model, cfg, device="cpu")


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("budget", [0, 1, 7])
def test_every_strategy_returns_budget_unique_unlabelled_pool_ids(pool, model, strategy, budget):
    labelled = pool.image_ids[:10]
    result = select_batch(strategy, _ctx(pool, model, labelled), budget)
    assert len(result.ids) == budget == len(result.scores)
    assert len(set(result.ids)) == budget
    assert set(result.ids) <= set(pool.image_ids)
    assert not set(result.ids) & set(labelled)
    assert all(np.isfinite(result.scores))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_budget_larger_than_what_is_left_is_a_clear_error(pool, model, strategy):
    with pytest.raises(SelectionError, match=r"budget 31 is larger than the 30 unlabelled images left"):
        select_batch(strategy, _ctx(pool, model, pool.image_ids[:10]), 31)


def test_whole_pool_can_be_chosen(pool, model):
    result = select_batch("hybrid", _ctx(pool, model, pool.image_ids[:10]), 30)
    assert sorted(result.ids) == sorted(pool.image_ids[10:])


def test_unknown_strategy(pool, model):
    with pytest.raises(SelectionError, match="unknown strategy 'smart'"):
        select_batch("smart", _ctx(pool, model), 3)


def test_random_is_seeded(pool, model):
    a = select_batch("random", _ctx(pool, model, seed=3), 5).ids
    b = select_batch("random", _ctx(pool, model, seed=3), 5).ids
    c = select_batch("random", _ctx(pool, model, seed=4), 5).ids
    assert a == b and a != c


def test_uncertainty_takes_the_least_confident_first(pool, model):
    ctx = _ctx(pool, model)
    result = select_batch("uncertainty", ctx, 5)
    unc = ctx.uncertainty()
    assert result.scores == sorted(result.scores, reverse=True)
    assert min(result.scores) >= np.sort(unc.score)[-5]


def test_hybrid_picks_only_uncertain_images_when_there_are_enough(pool, model):
    ctx = _ctx(
        pool, model, uncertainty=UncertaintyConfig(input_size=64, th_hm=1.0, th_kp=14)
    )  # nothing is confident
    result = select_batch("hybrid", ctx, 6)
    assert ctx.stats["uncertain"] == len(pool) and "filled" not in ctx.stats
    assert len(result.ids) == 6


@pytest.mark.parametrize("fill", ["diversity", "uncertainty"])
def test_hybrid_fills_by_the_documented_rule_when_few_are_uncertain(pool, model, fill):
    ctx = _ctx(
        pool, model, uncertainty=UncertaintyConfig(input_size=64, th_hm=1e-9, th_kp=1), fill=fill
    )  # all confident
    result = select_batch("hybrid", ctx, 4)
    assert ctx.stats["uncertain"] == 0 and ctx.stats["filled"] == 4
    assert len(set(result.ids)) == 4


@pytest.mark.parametrize(
    "filt",
    [dict(th_hm=1e-9, th_kp=1), dict(th_hm=1.0, th_kp=14)],
    ids=["nothing-uncertain", "everything-uncertain"],
)
def test_hybrid_is_diversity_when_its_filter_passes_nothing_or_everything(pool, model, filt):
    """The docs' reading of the youtube grids (pass rate 0: hybrid = ANN diversity) rests on this identity."""
    labelled = pool.image_ids[:10]
    unc = UncertaintyConfig(input_size=64, **filt)
    for seed in (0, 5):
        hybrid = select_batch("hybrid", _ctx(pool, model, labelled, uncertainty=unc, seed=seed), 6)
        diverse = select_batch("diversity", _ctx(pool, model, labelled, uncertainty=unc, seed=seed), 6)
        assert hybrid.ids == diverse.ids, seed


def test_hybrid_differs_from_diversity_when_its_filter_passes_about_half(pool, model):
    """The identity above is not vacuous: with th_hm at the median of the images' highest peaks, hybrid keeps
    to the uncertain half, and its batch is not diversity's."""
    labelled = pool.image_ids[:10]
    th = float(np.median(_ctx(pool, model, labelled).uncertainty().peaks.max(axis=1)))
    half = _ctx(pool, model, labelled, uncertainty=UncertaintyConfig(input_size=64, th_hm=th, th_kp=1))
    hybrid = select_batch("hybrid", half, 6)
    uncertain = {half.candidate_ids[i] for i in np.flatnonzero(half.uncertainty().uncertain)}
    assert 6 <= len(uncertain) < len(half.candidate_ids) and set(hybrid.ids) <= uncertain
    assert hybrid.ids != select_batch("diversity", _ctx(pool, model, labelled), 6).ids


def test_coreset_and_diversity_cover_better_than_random(pool, model):
    from activepose.sampling.diversity import coverage

    ctx = _ctx(pool, model)
    emb = ctx.candidate_embeddings()
    rnd = select_batch("random", ctx, 8).ids
    rnd_cov = coverage(emb, np.array([ctx.candidate_ids.index(i) for i in rnd]))
    for strategy in ("coreset", "diversity"):
        cov = select_batch(strategy, _ctx(pool, model), 8).stats["coverage"]
        assert cov["max"] <= rnd_cov["max"] + 1e-6, strategy
    assert select_batch("coreset", _ctx(pool, model), 8).stats["coverage"]["max"] > 0


def test_isolation_scores_are_nearest_other_distances():
    from activepose.sampling.strategies import _isolation

    emb = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [10.0, 10.0]])
    got = _isolation(emb, np.array([0, 1, 2]), labelled=np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(got, [1.0, 3.0, 3.0], atol=1e-5)


@pytest.mark.parametrize(
    "kw,message",
    [
        (
            dict(extractor="nope"),
            r"--extractor 'nope' is not a known feature extractor; choose from mobilenet_v2, pose_backbone, resnet50",
        ),
        (
            dict(ann_backend="nope"),
            r"--ann 'nope' is not a known ANN backend; choose from annoy, exact, faiss",
        ),
        (dict(fill="random"), r"--fill must be diversity or uncertainty, got 'random'"),
        (dict(batch_size=0), r"--batch-size must be >= 1, got 0"),
        (
            dict(extractor="pose_backbone", weights="w.pt"),
            r"--weights does not apply to the pose_backbone extractor",
        ),
    ],
)
def test_selection_config_errors_name_the_option(kw, message):
    with pytest.raises(ConfigError, match="^" + message):
        SelectionConfig(**kw)


def test_unknown_strategy_is_a_config_error_naming_the_choices(pool, model):
    with pytest.raises(UnknownStrategyError) as info:
        check_strategy("smart")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, SelectionError)
    assert str(info.value) == f"unknown strategy 'smart': choose from {', '.join(sorted(STRATEGIES))}"
    assert list_strategies() == sorted(STRATEGIES) and {"random", "hybrid", "diversity"} <= set(
        list_strategies()
    )
    assert check_strategy("hybrid") == "hybrid"


@pytest.mark.parametrize("strategy", ["diversity", "hybrid"])
def test_missing_ann_library_is_an_environment_problem_before_any_scoring(pool, model, monkeypatch, strategy):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    ctx = _ctx(pool, model, pool.image_ids[:10], ann_backend="faiss")  # a known backend: the config is valid
    with pytest.raises(EnvironmentProblem, match=r"^--ann faiss: the 'faiss' library is not installed"):
        select_batch(strategy, ctx, 3)
    assert ctx._uncertainty is None and not ctx._embeddings and not ctx.timings


def test_missing_extractor_weights_fail_before_uncertainty_scoring(pool, model, tmp_path):
    missing = tmp_path / "resnet50.pth"
    ctx = _ctx(pool, model, ())
    ctx.cfg = SelectionConfig(
        uncertainty=UncertaintyConfig(input_size=64), extractor="resnet50", weights=missing
    )
    with pytest.raises(
        EnvironmentProblem, match=r"resnet50 weights file .*resnet50.pth does not exist"
    ) as info:
        select_batch("hybrid", ctx, 3)
    assert isinstance(info.value, FileNotFoundError)
    assert ctx._uncertainty is None  # the pool was not scored first


def test_strategy_needing_the_model_fails_before_any_work(pool):
    ctx = SelectionContext(pool, None, None, SelectionConfig(extractor="pose_backbone"), device="cpu")
    with pytest.raises(SelectionError, match=r"^the hybrid strategy needs the pose model \(--model\)"):
        select_batch("hybrid", ctx, 2)
    with pytest.raises(
        SelectionError, match=r"^the pose_backbone extractor needs the pose model \(--model\)"
    ):
        select_batch("diversity", ctx, 2)
    assert len(select_batch("random", ctx, 2).ids) == 2


@pytest.mark.parametrize("strategy", ["random", "hybrid", "diversity"])
def test_max_candidates_considers_a_seeded_sample_of_the_unlabelled(pool, model, strategy):
    labelled = pool.image_ids[:10]
    ctx = _ctx(pool, model, labelled, max_candidates=12, seed=3)
    assert len(ctx.candidate_ids) == 12 and ctx.stats["unlabelled"] == 30
    assert not set(ctx.candidate_ids) & set(labelled)
    assert ctx.candidate_ids == _ctx(pool, model, labelled, max_candidates=12, seed=3).candidate_ids
    assert ctx.candidate_ids != _ctx(pool, model, labelled, max_candidates=12, seed=4).candidate_ids
    result = select_batch(strategy, ctx, 5)
    assert set(result.ids) <= set(ctx.candidate_ids) and len(set(result.ids)) == 5
    # A cap at or above what is left changes nothing.
    assert (
        _ctx(pool, model, labelled, max_candidates=30).candidate_ids
        == _ctx(pool, model, labelled).candidate_ids
    )


def test_budget_larger_than_the_candidate_sample_names_the_option(pool, model):
    with pytest.raises(SelectionError, match="--max-candidates 4"):
        select_batch("random", _ctx(pool, model, max_candidates=4), 5)
    with pytest.raises(ConfigError, match="--max-candidates must be >= 1"):
        SelectionConfig(max_candidates=0)


def test_ranked_hybrid_chooses_diversely_among_the_most_uncertain(pool, model):
    ctx = _ctx(pool, model, pool.image_ids[:10], ranked_pool=2.0)
    result = select_batch("ranked-hybrid", ctx, 5)
    ranking = ctx.uncertainty().ranking()
    hardest = {ctx.candidate_ids[i] for i in ranking[:10]}  # 2.0 x budget
    assert set(result.ids) <= hardest and len(set(result.ids)) == 5
    assert result.stats["ranked_pool"] == 10
    # ranked_pool 1: exactly the most uncertain images, as the uncertainty strategy takes them
    same = select_batch("ranked-hybrid", _ctx(pool, model, pool.image_ids[:10], ranked_pool=1.0), 5)
    top = select_batch("uncertainty", _ctx(pool, model, pool.image_ids[:10]), 5)
    assert set(same.ids) == set(top.ids)
    with pytest.raises(ConfigError, match="--ranked-pool must be >= 1"):
        SelectionConfig(ranked_pool=0.5)


def test_adaptive_stays_typical_without_evidence_and_turns_to_uncertainty_when_it_is_informative(pool, model):
    """The switch of `adaptive`: without a labelled batch chosen by a model it is typiclust; when the uncertainty
    told that batch's worse half apart (AUROC >= ADAPTIVE_AUROC on enough images) it is ranked-hybrid; it says
    which and why."""
    labelled = pool.image_ids[:10]
    plain = select_batch("adaptive", _ctx(pool, model, labelled), 5)
    assert (
        plain.stats["adaptive"]["mode"] == "typiclust"
        and "no labelled batch" in plain.stats["adaptive"]["why"]
    )
    assert plain.ids == select_batch("typiclust", _ctx(pool, model, labelled), 5).ids
    for auroc, n, mode in ((0.9, 40, "ranked-hybrid"), (0.55, 40, "typiclust"), (0.9, 5, "typiclust")):
        ctx = _ctx(pool, model, labelled)
        ctx.evidence = {"n": n, "auroc": auroc, "spearman": 0.5, "pass_rate": 0.3, "mean_pck": 0.4}
        result = select_batch("adaptive", ctx, 5)
        why = result.stats["adaptive"]["why"]
        assert (
            result.stats["adaptive"]["mode"] == mode and f"AUROC {auroc:.2f} on the last batch's {n}" in why
        )
        assert result.ids == select_batch(mode, _ctx(pool, model, labelled), 5).ids
