"""Query strategies: which unlabelled pool images to label next. Every strategy returns `(ids, scores)`.

- `random`: the paper's baseline, seeded.
- `uncertainty`: lowest confidence first (the uncertainty module's continuous score, highest first).
- `diversity`: ANN diversity over the embeddings of the whole unlabelled pool, away from labelled images.
- `coreset`: exact greedy k-center over the same embeddings (Sener & Savarese), the reference.
- `hybrid`: the paper: uncertainty filter (fewer than thKP keypoints peak at >= thHM) -> ImageNet features ->
  ANN diversity among the uncertain images. When fewer images are uncertain than the budget, all of them
  are taken and the rest is filled by ANN diversity among the other images, with the labelled and the
  already chosen images as the centres to stay away from (`fill="diversity"`, default), or by the
  uncertainty score (`fill="uncertainty"`).
- `ranked-hybrid`: hybrid with a relative filter: the `ranked_pool` x budget most uncertain candidates by the
  continuous score (whatever the absolute thHM / thKP say), then ANN diversity among them. Why: with a weak
  model every image is "uncertain" under the paper's absolute rule (measured on LSPET with the cpu preset:
  2,000 of 2,000 candidates), so `hybrid` degenerates to `diversity`; with a strong one almost none is, and
  it degenerates to the fill rule. Ranking keeps the filter's intent — diversity among the hardest — at any
  model strength.
- `kmeans`: k-means (k = budget) over the candidates' embeddings, the image nearest each centre — the frame
  extraction of DeepLabCut and SLEAP (`typical`).
- `mpe`: the highest multi-peak entropy of the heatmaps first (Liu & Ferrari 2017; `signals`).
- `tta-consistency`: the images whose keypoints move most when the image is mirrored first (`signals`);
  `tta-hybrid`: ANN diversity among the `ranked_pool` x budget least consistent, as `ranked-hybrid` does.
- `adaptive`: `typiclust` until the uncertainty told the images its model then got wrong from the others on the
  last labelled batch (AUROC >= 0.65), then `ranked-hybrid`; the switch is reported in the stats.
- `typiclust`: TypiClust (Hacohen et al. 2022): the most typical image of each of the largest clusters that no
  labelled image covers yet (`typical`). At small budgets typical images pay more than uncertain ones.

Ids are the pool's stable image ids, never positions. Scores: the uncertainty score for `uncertainty` and
`hybrid`, a uniform draw for `random`, and for `diversity` / `coreset` the distance from each chosen
image to its nearest other chosen or labelled image (how much new ground it covers); for `kmeans` the size of
the pick's cluster, for `typiclust` its typicality.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import config
from ..config import SelectionConfig
from ..errors import ActiveposeError, ConfigError
from ..pose.coco import CocoKeypoints
from . import NEEDS_MODEL
from .uncertainty import PoolUncertainty, score_pool

LOG = logging.getLogger(__name__)


class SelectionError(ActiveposeError, ValueError):
    """A selection request cannot be met (unknown strategy, budget larger than the pool, missing model)."""


class UnknownStrategyError(SelectionError, ConfigError):
    """`--strategy` names no registered strategy (both a SelectionError and a ConfigError)."""


# Strategies that search embeddings with the ANN backend / that need image embeddings at all.
_USES_ANN = frozenset({"diversity", "hybrid", "ranked-hybrid", "tta-hybrid", "adaptive"})
_USES_EMBEDDINGS = frozenset(
    {"diversity", "coreset", "hybrid", "ranked-hybrid", "kmeans", "typiclust", "tta-hybrid", "adaptive"}
)


@dataclass
class SelectionResult:
    ids: list[int]
    scores: list[float]
    strategy: str
    stats: dict[str, Any]


class SelectionContext:
    """The pool, what is labelled, and lazily computed (memoised) uncertainty and embeddings.

    Strategies ask for what they need; nothing is computed twice within one selection, and the on-disk
    caches make repeated selections on the same model and images cheap.
    """

    def __init__(
        self,
        pool: CocoKeypoints,
        labelled: CocoKeypoints | None = None,
        model=None,
        cfg: SelectionConfig | None = None,
        device=None,
        progress: Callable[[str, int, int], None] | None = None,
        evidence: dict[str, Any] | None = None,
    ):
        self.pool = pool
        # How informative the uncertainty proved on the last labelled batch: the model that chose it, scored on
        # it before training on it, against its error there once labelled (`workflow.diagnostics`). `adaptive`
        # switches on it; None: no such batch yet (or no project: the file-based `select`).
        self.evidence = evidence
        self.labelled = labelled
        self.model = model
        self.cfg = cfg or SelectionConfig()
        self.device = device
        self.progress = progress
        labelled_ids = set(labelled.image_ids) if labelled is not None else set()
        unlabelled = [i for i in pool.image_ids if i not in labelled_ids]
        self.unlabelled = len(unlabelled)
        cap = self.cfg.max_candidates
        if cap is not None and cap < len(unlabelled):
            keep = np.random.default_rng([self.cfg.seed, 7]).choice(len(unlabelled), cap, replace=False)
            unlabelled = [unlabelled[k] for k in sorted(keep)]
        self.candidate_ids = unlabelled
        self.timings: dict[str, float] = {}
        self.stats: dict[str, Any] = {
            "pool": len(pool),
            "labelled": len(labelled_ids),
            "candidates": len(self.candidate_ids),
            "unlabelled": self.unlabelled,
        }
        self._uncertainty: PoolUncertainty | None = None
        self._signals: dict[str, np.ndarray] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        self._extractor = None
        self._engine = None

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
        return out

    def _report(self, stage: str, total: int):
        """Return a `progress(n images done)` callback that reports (stage, done so far, total)."""
        if self.progress is None:
            return None
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            self.progress(stage, done[0], total)

        return advance

    def engine(self):
        """Return where the pool is scored (`SelectionConfig.engine`), created once."""
        from .engine import create_engine

        if self._engine is None:
            self._engine = create_engine(self.cfg.engine, self.cfg.ray_address)
        return self._engine

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def uncertainty(self) -> PoolUncertainty:
        """Return the uncertainty of every candidate, in `candidate_ids` order."""
        if self._uncertainty is None:
            if self.model is None:
                raise SelectionError("this strategy needs the pose model (--model) for heatmap uncertainty")
            cache = self.cfg.cache_dir / "uncertainty" if self.cfg.cache_dir else None
            self._uncertainty = self._timed(
                "uncertainty",
                lambda: score_pool(
                    self.model, self.pool, self.cfg.uncertainty, image_ids=self.candidate_ids,
                    device=self.device, cache=cache, progress=self._report("uncertainty", len(self.candidate_ids)),
                    engine=self.engine(),
                ),
            )  # fmt: skip
            self.stats["uncertain"] = int(self._uncertainty.uncertain.sum())
        return self._uncertainty

    def signal(self, name: str) -> np.ndarray:
        """Return the `name` signal ("mpe", "flip": `signals`) of every candidate, higher = more uncertain."""
        from .signals import score_signal

        if name not in self._signals:
            if self.model is None:
                raise SelectionError(f"the {name} signal needs the pose model (--model)")
            cache = self.cfg.cache_dir / "signals" if self.cfg.cache_dir else None
            self._signals[name] = self._timed(
                name,
                lambda: score_signal(
                    self.model, self.pool, name, self.cfg.uncertainty, image_ids=self.candidate_ids,
                    device=self.device, cache=cache, progress=self._report(name, len(self.candidate_ids)),
                    engine=self.engine(),
                ),
            )  # fmt: skip
        return self._signals[name]

    def extractor(self):
        """Return the feature extractor (created once; missing weights fail here, naming the file)."""
        from .features import create_extractor

        if self._extractor is None:
            if self.cfg.extractor == "pose_backbone" and self.model is None:
                raise SelectionError("the pose_backbone extractor needs the pose model (--model)")
            self._extractor = create_extractor(
                self.cfg.extractor, weights=self.cfg.weights, model=self.model, device=self.device
            )
        return self._extractor

    def _extract(self, key: str, data: CocoKeypoints, ids: list[int]) -> np.ndarray:
        from .features import extract_features

        if key not in self._embeddings:
            self.extractor()
            paths = [data.image_path(i) for i in ids]
            cache = self.cfg.cache_dir / "features" if self.cfg.cache_dir else None
            self._embeddings[key] = self._timed(
                "features",
                lambda: extract_features(
                    self._extractor, paths, cache_dir=cache, batch_size=self.cfg.batch_size,
                    progress=self._report(f"features ({key})", len(paths)), engine=self.engine(),
                ),
            )  # fmt: skip
        return self._embeddings[key]

    def candidate_embeddings(self) -> np.ndarray:
        """Return (len(candidate_ids), D) L2-normalised embeddings of the candidates."""
        return self._extract("candidates", self.pool, self.candidate_ids)

    def labelled_embeddings(self) -> np.ndarray | None:
        """Return the embeddings of the labelled images (None when nothing is labelled)."""
        if self.labelled is None or not len(self.labelled):
            return None
        return self._extract("labelled", self.labelled, self.labelled.image_ids)


StrategyFn = Callable[[SelectionContext, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
STRATEGIES: dict[str, StrategyFn] = {}  # name -> strategy; the known names are its keys (`list_strategies`)


def list_strategies() -> list[str]:
    """Return the registered strategy names, sorted."""
    return sorted(STRATEGIES)


def check_strategy(name: str) -> str:
    """Return `name` if it is a registered strategy; raise UnknownStrategyError naming the choices."""
    if name not in STRATEGIES:
        raise UnknownStrategyError(f"unknown strategy {name!r}: choose from {', '.join(list_strategies())}")
    return name


def register_strategy(name: str) -> Callable[[StrategyFn], StrategyFn]:
    def decorator(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = fn
        if name not in config.STRATEGIES:  # settings check names without importing this module
            config.STRATEGIES.append(name)
        return fn

    return decorator


def _isolation(emb: np.ndarray, chosen: np.ndarray, labelled: np.ndarray | None) -> np.ndarray:
    """Return, per chosen row, the distance to its nearest other chosen or labelled embedding.

    Uses the exact backend's chunked nearest-neighbour search: memory stays bounded for large budgets.
    """
    from .ann import create_index

    sel = emb[chosen]
    others = sel if labelled is None else np.concatenate([sel, labelled])
    if len(others) < 2:
        return np.full(len(sel), np.inf)
    index = create_index("exact", dim=emb.shape[1])
    index.add(others)
    index.build()
    idx, dist = index.query(sel, 2)
    own = np.arange(len(sel))
    return np.where(idx[:, 0] == own, dist[:, 1], dist[:, 0]).astype(np.float64)  # skip the row itself


@register_strategy("random")
def random_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    priority = rng.random(len(ctx.candidate_ids))
    order = np.argsort(-priority, kind="stable")[:budget]
    return order, priority[order]


@register_strategy("uncertainty")
def uncertainty_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    score = ctx.uncertainty().score
    order = np.argsort(-score, kind="stable")[:budget]  # stable: ties keep pool order
    return order, score[order]


@register_strategy("diversity")
def diversity_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    from .diversity import select_diverse

    emb, lab = ctx.candidate_embeddings(), ctx.labelled_embeddings()
    chosen = ctx._timed(
        "diversity",
        lambda: select_diverse(emb, budget, labelled=lab, backend=ctx.cfg.ann_backend, seed=ctx.cfg.seed),
    )
    return chosen, _isolation(emb, chosen, lab)


@register_strategy("coreset")
def coreset_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    from .diversity import kcenter_greedy

    emb, lab = ctx.candidate_embeddings(), ctx.labelled_embeddings()
    chosen = ctx._timed("diversity", lambda: kcenter_greedy(emb, budget, labelled=lab))
    return chosen, _isolation(emb, chosen, lab)


def _diverse_among(
    ctx: SelectionContext, rows: np.ndarray, k: int, centres: np.ndarray | None = None
) -> np.ndarray:
    """Return `k` of the candidate `rows` by ANN diversity, away from `centres` (default: the labelled images)."""
    from .diversity import select_diverse

    emb = ctx.candidate_embeddings()
    if centres is None:
        centres = ctx.labelled_embeddings()
    sub = ctx._timed(
        "diversity",
        lambda: select_diverse(
            emb[rows], k, labelled=centres if centres is not None and len(centres) else None,
            backend=ctx.cfg.ann_backend, seed=ctx.cfg.seed,
        ),
    )  # fmt: skip
    return rows[sub]


@register_strategy("hybrid")
def hybrid_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    unc = ctx.uncertainty()
    uncertain = np.flatnonzero(unc.uncertain)
    if len(uncertain) >= budget:
        chosen = _diverse_among(ctx, uncertain, budget)
    else:
        # Fewer uncertain than the budget: take them all, then fill (see the module docstring).
        rest = np.flatnonzero(~unc.uncertain)
        need = budget - len(uncertain)
        ctx.stats["filled"] = int(need)
        if ctx.cfg.fill == "uncertainty":
            fill = rest[np.argsort(-unc.score[rest], kind="stable")[:need]]
        elif ctx.cfg.fill == "diversity":
            emb, lab = ctx.candidate_embeddings(), ctx.labelled_embeddings()
            centres = emb[uncertain] if lab is None else np.concatenate([lab, emb[uncertain]])
            fill = _diverse_among(ctx, rest, need, centres)
        else:
            raise SelectionError(f"unknown fill rule {ctx.cfg.fill!r}: use 'diversity' or 'uncertainty'")
        chosen = np.concatenate([uncertain, fill])
    return chosen, unc.score[chosen]


@register_strategy("ranked-hybrid")
def ranked_hybrid_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    unc = ctx.uncertainty()
    size = min(len(unc.score), max(budget, int(np.ceil(ctx.cfg.ranked_pool * budget))))
    hardest = np.sort(unc.ranking()[:size])  # the most uncertain, in candidate order
    ctx.stats["ranked_pool"] = int(size)
    chosen = _diverse_among(ctx, hardest, budget)
    return chosen, unc.score[chosen]


@register_strategy("kmeans")
def kmeans_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    from .typical import kmeans_select

    emb = ctx.candidate_embeddings()
    return ctx._timed("clustering", lambda: kmeans_select(emb, budget, seed=ctx.cfg.seed))


@register_strategy("typiclust")
def typiclust_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    from .typical import typiclust_select

    emb, lab = ctx.candidate_embeddings(), ctx.labelled_embeddings()
    return ctx._timed("clustering", lambda: typiclust_select(emb, budget, labelled=lab, seed=ctx.cfg.seed))


def _highest(score: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="stable")[:budget]  # stable: ties keep pool order
    return order, score[order]


@register_strategy("mpe")
def mpe_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    return _highest(ctx.signal("mpe"), budget)


@register_strategy("tta-consistency")
def tta_consistency_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    return _highest(ctx.signal("flip"), budget)


@register_strategy("tta-hybrid")
def tta_hybrid_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    score = ctx.signal("flip")
    size = min(len(score), max(budget, int(np.ceil(ctx.cfg.ranked_pool * budget))))
    unstable = np.sort(np.argsort(-score, kind="stable")[:size])  # the least consistent, in candidate order
    ctx.stats["ranked_pool"] = int(size)
    chosen = _diverse_among(ctx, unstable, budget)
    return chosen, score[chosen]


def _spread(strategy: str, ctx: SelectionContext, budget: int, rng: np.random.Generator):
    """The strategy's preference list (PREFERENCE_FACTOR x budget), then the batch spread over videos."""
    from .videos import PREFERENCE_FACTOR, spread_over_videos, video_names

    n = len(ctx.candidate_ids)
    pref, pref_scores = STRATEGIES[strategy](ctx, min(n, PREFERENCE_FACTOR * budget), rng)
    pref = np.asarray(pref, dtype=np.int64)
    cfg = ctx.cfg
    videos = video_names(ctx.pool, ctx.candidate_ids, cfg.video_pattern)
    labelled_ids = ctx.labelled.image_ids if ctx.labelled is not None else []
    labelled_videos = video_names(ctx.labelled, labelled_ids, cfg.video_pattern) if labelled_ids else []
    dedupe = cfg.min_frame_distance > 0
    rows, stats = ctx._timed(
        "videos",
        lambda: spread_over_videos(
            pref, videos, budget, labelled_videos=labelled_videos,
            emb=ctx.candidate_embeddings() if dedupe else None,
            labelled_emb=ctx.labelled_embeddings() if dedupe and labelled_ids else None,
            min_distance=cfg.min_frame_distance, seed=cfg.seed,
        ),
    )  # fmt: skip
    ctx.stats.update(stats)
    by_row = dict(zip(pref.tolist(), np.asarray(pref_scores, dtype=np.float64).tolist(), strict=True))
    floor = min(by_row.values(), default=0.0)  # a frame from outside the list: the list's lowest score
    return rows, np.array([by_row.get(int(r), floor) for r in rows])


ADAPTIVE_AUROC = 0.65  # the uncertainty must tell the worse half of the last batch from the rest this well
ADAPTIVE_MIN_IMAGES = 20  # ... on at least this many of its images


@register_strategy("adaptive")
def adaptive_strategy(ctx: SelectionContext, budget: int, rng: np.random.Generator):
    """Typical images (`typiclust`) until the uncertainty proves informative on the last labelled batch (the
    model that chose it told the images it then got wrong from the others: AUROC >= ADAPTIVE_AUROC on >=
    ADAPTIVE_MIN_IMAGES of them, `ctx.evidence`), then uncertainty -> diversity (`ranked-hybrid`). The evidence
    and the mode are reported in the selection's stats ("adaptive")."""
    evidence = ctx.evidence
    auroc = (evidence or {}).get("auroc")
    informative = (
        evidence is not None
        and evidence["n"] >= ADAPTIVE_MIN_IMAGES
        and auroc is not None
        and np.isfinite(auroc)
        and auroc >= ADAPTIVE_AUROC
    )
    mode = "ranked-hybrid" if informative else "typiclust"
    ctx.stats["adaptive"] = {
        "mode": mode,
        "why": (
            "no labelled batch chosen by a model yet"
            if evidence is None
            else f"uncertainty AUROC {'undefined' if auroc is None else f'{auroc:.2f}'} on the last batch's "
            f"{evidence['n']} images "
            + (
                f"(>= {ADAPTIVE_AUROC} on >= {ADAPTIVE_MIN_IMAGES} images)"
                if informative
                else f"(below {ADAPTIVE_AUROC}, or under {ADAPTIVE_MIN_IMAGES} images)"
            )
        ),
        **({} if evidence is None else {k: evidence[k] for k in ("n", "auroc", "spearman")}),
    }
    return STRATEGIES[mode](ctx, budget, rng)


def select_batch(strategy: str, ctx: SelectionContext, budget: int) -> SelectionResult:
    """Return the `budget` pool images chosen by `strategy`, with their scores and per-stage statistics.

    Everything that can be checked is checked before any image is scored: the strategy name
    (UnknownStrategyError), the budget (SelectionError), the model when the strategy needs it, the ANN
    library (EnvironmentProblem when not installed) and the feature extractor's weights.
    """
    check_strategy(strategy)
    n = len(ctx.candidate_ids)
    if budget < 0:
        raise SelectionError(f"budget must be >= 0, got {budget}")
    if budget > n and n < ctx.unlabelled:
        raise SelectionError(
            f"budget {budget} is larger than --max-candidates {ctx.cfg.max_candidates} (the sample of the "
            f"{ctx.unlabelled} unlabelled images that is considered)"
        )
    if budget > n:
        where = f" in {ctx.pool.path}" if ctx.pool.path else ""
        raise SelectionError(
            f"budget {budget} is larger than the {n} unlabelled images left{where} "
            f"({len(ctx.pool)} in the pool, {len(ctx.pool) - n} labelled)"
        )
    if budget:
        if strategy in NEEDS_MODEL and ctx.model is None:
            raise SelectionError(
                f"the {strategy} strategy needs the pose model (--model) for heatmap uncertainty"
            )
        if strategy in _USES_ANN:
            from .ann import require_backend

            require_backend(ctx.cfg.ann_backend)
        if strategy in _USES_EMBEDDINGS:
            ctx.extractor()
    rng = np.random.default_rng(ctx.cfg.seed)
    t0 = time.perf_counter()
    try:
        return _select(strategy, ctx, budget, rng, t0)
    finally:
        ctx.close_engine()  # a local Ray started for this selection stops here (the coverage may use it too)


def _select(strategy: str, ctx: SelectionContext, budget: int, rng, t0: float) -> SelectionResult:
    if budget and ctx.cfg.spread_videos:
        positions, scores = _spread(strategy, ctx, budget, rng)
    else:
        positions, scores = (
            STRATEGIES[strategy](ctx, budget, rng) if budget else (np.zeros(0, int), np.zeros(0))
        )
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) != budget or len(np.unique(positions)) != budget:
        raise AssertionError(f"strategy {strategy!r} returned {len(positions)} picks for budget {budget}")
    ids = [ctx.candidate_ids[p] for p in positions]
    stats = dict(ctx.stats)
    stats["seconds"] = {
        **{k: round(v, 3) for k, v in ctx.timings.items()},
        "total": round(time.perf_counter() - t0, 3),
    }
    if ctx._embeddings.get("candidates") is not None and budget:
        from .diversity import coverage

        emb, lab = ctx.candidate_embeddings(), ctx.labelled_embeddings()
        # Exact coverage costs N x (k + labelled) distances; past ~1e10 an unbiased sample of candidates.
        big = len(emb) * (budget + (0 if lab is None else len(lab))) > 1e10
        stats["coverage"] = coverage(emb, positions, labelled=lab, sample=20_000 if big else None)
    return SelectionResult(ids=ids, scores=[float(s) for s in scores], strategy=strategy, stats=stats)
