"""VCC 2026's scale (cell-eval2 0.20.0): the baseline b, the split-half replicate r, and the score (u - b)/(r - b).

Read in cell-eval2's `baseline.py`, `anchor.py`, `ceiling.py`, `lfc_nmae_ref.py`, `score.py`, `scoring.py` and
`catalog.py`; reimplemented here on the summaries of `vcc2026`.

- Baseline b (`baseline` / `build_generic_baseline`, `emit="dispersed"`, seed 0): the profile is the equal-weight
  mean over perturbations of each perturbation's mean count vector; gene g's mean leaves out the perturbations
  that target g. Every perturbed cell of the reference is replaced by a control cell drawn with replacement
  (`default_rng(seed).integers`, one draw per group in sorted label order) and scaled gene-wise by
  profile / control mean (0 where the control mean is 0), rounded to float32; control rows are the real
  control cells. That prediction is scored as an ordinary submission.
- Replicate r (`run --anchor`, base seed 0, 5 splits): seeds `SeedSequence(0).generate_state(5)`; per seed
  each label's cells (control included, labels in sorted order) are permuted by `default_rng(seed)` and cut
  into two disjoint halves of floor(n/2) cells; half B is scored as the prediction against half A with
  `control_source: pred` (each half's effects and DE against its own control). `de_wilcoxon_lfc_nmae`'s
  split value is instead the full-gate reference: the gate and denominator come from the full reference's DE,
  only |lfc_A - lfc_B| from the halves (a gene a half's DE did not keep counts as LFC 0). r is the mean of
  the five split aggregates.
- Score per metric: higher-is-better (`pds_cosine`, `de_wilcoxon_*_raw`, `de_wilcoxon_sig_jaccard`):
  (u - b)/(r - b), unclipped, a missing u scoring (0 - b)/(r - b); `expr_mse_unbiased_capped_norm`:
  1 - (u - r)/(b - r) clipped to [0, 1]; `de_wilcoxon_lfc_nmae`: 1 - (u - r)/(b - r) floored at -6 (also the
  score of a missing u). A context's score is the mean of the six. b and r must leave room (r > b for the
  higher ones, b > r for the lower ones), otherwise the scale is undefined and this stops.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib

import numpy as np
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.eval import vcc2026 as v
from biojepac.eval.h5read import anndata_parts, read_h5ad_parts, read_obs_column, read_var_names

logger = logging.getLogger(__name__)

BASE_SEED = 0
N_SPLITS = 5
BASELINE_SEED = 0
SCORED = ("de_wilcoxon_lfc_nmae", "expr_mse_unbiased_capped_norm", "de_wilcoxon_direction_fidelity_yield_raw",
          "de_wilcoxon_direction_reach_raw", "de_wilcoxon_sig_jaccard", "pds_cosine")
"""The six scored aggregates, in the order cell-eval2 averages them (lower-is-better first, then by name)."""
LOWER = {"de_wilcoxon_lfc_nmae": (-6.0, math.inf), "expr_mse_unbiased_capped_norm": (0.0, 1.0)}
"""Lower-is-better members and their (floor, ceiling) on the score."""


@dataclasses.dataclass(frozen=True)
class ContextScore:
    """One context scored: per-perturbation metrics, the three aggregates and the scores."""

    perts: np.ndarray
    per_perturbation: dict[str, np.ndarray]
    user: dict[str, float]
    baseline: dict[str, float]
    replicate: dict[str, float]
    scores: dict[str, float]
    """Per scored metric, plus `avg_score`."""
    splits: list[dict[str, float]]
    """The replicate's per-split aggregates."""


def score_files(pred, real, *, pert_col: str, control: str, context_col: str | None = None,
                target_gene_map: dict | None = None, harmonise: bool = True, workers: int = 2,
                base_seed: int = BASE_SEED, n_splits: int = N_SPLITS, with_scale: bool = True) -> dict[str, ContextScore]:
    """Score two files (paths or AnnData) context by context ({"": ...} without `context_col`).

    The target gene of each label: `target_gene_map` first, then (with `harmonise`) our gene harmonisation for
    labels that are not a gene name themselves, then the label itself.

    One file's cells at a time: the prediction's labels and genes are checked first (no matrix read), then the
    reference is summarised with its baseline and replicate, keeping only its control cells, then the
    prediction is read and scored."""
    pred_labels = peek_labels(pred, pert_col=pert_col, control=control, context_col=context_col)
    reals = load_contexts(real, pert_col=pert_col, control=control, context_col=context_col)
    if set(pred_labels) != set(reals):
        raise InputError(f"contexts differ: prediction {sorted(pred_labels)}, reference {sorted(reals)}")
    refs = {}
    for ctx in sorted(reals):
        r = reals.pop(ctx)
        genes, perts = pred_labels[ctx]
        v.check_alike(dataclasses.replace(r, name=str(pred), x=None, genes=genes, perts=perts), r)
        tmap = dict(v.harmonised_target_map(r.perts, r.genes) if harmonise else {})
        tmap.update(target_gene_map or {})
        unresolved = [str(p) for p, c in zip(r.perts, v.target_columns(r.perts, r.genes, tmap)) if c < 0 and
                      tmap.get(p, "") is not None]
        if unresolved:
            logger.warning("%s: %d of %d labels name no measured gene and are scored without target-gene "
                           "exclusion, e.g. %s", r.name, len(unresolved), len(r.perts), unresolved[:5])
        refs[ctx] = reference(r, tmap, workers=workers, base_seed=base_seed, n_splits=n_splits, with_scale=with_scale)
        del r
    preds = load_contexts(pred, pert_col=pert_col, control=control, context_col=context_col)
    return {ctx: score_prediction(preds.pop(ctx), refs[ctx], workers=workers) for ctx in sorted(refs)}


def peek_labels(src, *, pert_col: str, control: str, context_col: str | None = None) -> dict[str, tuple]:
    """Per context, (gene names, sorted perturbation labels) of a file, without reading its matrix."""
    if isinstance(src, (str, pathlib.Path)):
        fpath = pathlib.Path(src)
        labels, genes = read_obs_column(fpath, pert_col), read_var_names(fpath)
        ctx = read_obs_column(fpath, context_col) if context_col else None
    else:
        labels, genes, _ = anndata_parts(src, "<AnnData>", pert_col)
        if context_col and context_col not in src.obs.columns:
            raise InputError(f"<AnnData>: obs column {context_col!r} not found (have {list(src.obs.columns)})")
        ctx = src.obs[context_col].astype(str).to_numpy() if context_col else None
    labels, genes = np.asarray(labels).astype(str), np.asarray(genes).astype(str)
    ctx = np.full(len(labels), "") if ctx is None else ctx
    return {c: (genes, np.unique(labels[(ctx == c) & (labels != control)])) for c in np.unique(ctx)}


@dataclasses.dataclass(frozen=True)
class Reference:
    """What scoring a prediction needs of one context's reference: its control cells (the prediction's DE
    runs against them), its summary, its target columns, and (with the scale) b and r."""

    control: v.CountScreen
    """The reference's control cells only (its perturbation labels kept, for the checks)."""
    side: v.Side
    tcols: np.ndarray
    baseline: dict[str, float]
    replicate: dict[str, float]
    splits: list[dict[str, float]]


def reference(real: v.CountScreen, target_gene_map: dict | None = None, *, workers: int = 2,
              base_seed: int = BASE_SEED, n_splits: int = N_SPLITS, baseline_seed: int = BASELINE_SEED,
              with_scale: bool = True) -> Reference:
    """Summarise one context's reference, with its baseline and replicate aggregates when `with_scale`."""
    tcols = v.target_columns(real.perts, real.genes, target_gene_map)
    real_side = v.side(real, workers=workers)
    base, rep, splits = {}, {}, []
    if with_scale:
        base_sc = baseline_screen(real, tcols, baseline_seed)
        _, base = v.score_sides(v.side(base_sc, real, workers), real_side, tcols, real.genes)
        del base_sc
        rep, splits = replicate(real, real_side, tcols, base_seed=base_seed, n_splits=n_splits, workers=workers)
    ctrl = real.codes == 0
    control = dataclasses.replace(real, x=real.x[ctrl], codes=real.codes[ctrl])
    return Reference(control, real_side, tcols, base, rep, splits)


def score_prediction(pred: v.CountScreen, ref: Reference, *, workers: int = 2) -> ContextScore:
    """Score `pred` against a summarised reference (one context)."""
    real = ref.control
    v.check_alike(pred, real)
    per, user = v.score_sides(v.side(pred, real, workers), ref.side, ref.tcols, real.genes)
    scores = scale_scores(user, ref.baseline, ref.replicate) if ref.baseline else {}
    return ContextScore(real.perts, per, user, ref.baseline, ref.replicate, scores, ref.splits)


def load_contexts(src, *, pert_col: str, control: str, context_col: str | None = None) -> dict[str, v.CountScreen]:
    """Read a file's raw counts (never modifying an AnnData passed in) and split it by `context_col`."""
    if isinstance(src, (str, pathlib.Path)):
        name = str(src)
        labels, genes, x = read_h5ad_parts(pathlib.Path(src), pert_col)
        ctx = read_obs_column(pathlib.Path(src), context_col) if context_col else None
    else:
        name = "<AnnData>"
        labels, genes, x = anndata_parts(src, name, pert_col)
        x = x.copy()  # the checks sort and convert in place: never on the caller's matrix
        if context_col and context_col not in src.obs.columns:
            raise InputError(f"{name}: obs column {context_col!r} not found (have {list(src.obs.columns)})")
        ctx = src.obs[context_col].astype(str).to_numpy() if context_col else None
    x = sp.csr_matrix(x)
    if ctx is None:
        return {"": v.count_screen(x, labels, genes, control=control, name=name)}
    return {c: v.count_screen(x[ctx == c], labels[ctx == c], genes, control=control, name=f"{name} [{c}]")
            for c in np.unique(ctx)}


def score_context(pred: v.CountScreen, real: v.CountScreen, target_gene_map: dict | None = None, *,
                  workers: int = 2, base_seed: int = BASE_SEED, n_splits: int = N_SPLITS,
                  baseline_seed: int = BASELINE_SEED, with_scale: bool = True) -> ContextScore:
    """Score `pred` against `real` (one context) and place it on the baseline-to-replicate scale (without
    `with_scale`, only the metrics: baseline, replicate and scores are left empty)."""
    v.check_alike(pred, real)
    ref = reference(real, target_gene_map, workers=workers, base_seed=base_seed, n_splits=n_splits,
                    baseline_seed=baseline_seed, with_scale=with_scale)
    return score_prediction(pred, ref, workers=workers)


def baseline_screen(real: v.CountScreen, tcols: np.ndarray, seed: int = BASELINE_SEED) -> v.CountScreen:
    """The generic-response baseline prediction, cells as cell-eval2 emits them (see the module docstring)."""
    n_groups = len(real.perts) + 1
    n_per = np.bincount(real.codes, minlength=n_groups)
    means = v.group_sums(real.x, real.codes, n_groups)[1:] / n_per[1:, None]
    total = means.sum(axis=0)
    count = np.full(real.x.shape[1], float(len(means)))
    if len(means) < 2 and (tcols >= 0).any():
        raise InputError(f"{real.name}: the baseline needs at least 2 perturbations to leave a target gene out")
    for i in np.flatnonzero(tcols >= 0):
        total[tcols[i]] -= means[i, tcols[i]]
        count[tcols[i]] -= 1.0
    if (count <= 0).any():
        raise InputError(f"{real.name}: every perturbation targets gene {real.genes[np.argmax(count <= 0)]!r}: "
                         "its baseline mean is undefined")
    profile = total / count
    ctrl = real.x[real.codes == 0]
    ctrl_mean = np.asarray(ctrl.sum(axis=0, dtype=np.float64)).ravel() / ctrl.shape[0]
    zero = ctrl_mean <= 0
    scale = np.where(zero, 0.0, profile / np.where(zero, 1.0, ctrl_mean))
    rng = np.random.default_rng(seed)
    src = np.concatenate([rng.integers(0, ctrl.shape[0], size=int(n)) for n in n_per[1:]] or [np.empty(0, int)])
    cells = ctrl[src]
    cells.data = (cells.data * scale[cells.indices]).astype(np.float32).astype(np.float64)
    cells.eliminate_zeros()
    x = sp.vstack([cells, ctrl], format="csr")
    x.sort_indices()
    totals = np.asarray(x.sum(axis=1)).ravel()
    if totals.size and totals.max() > v.MAX_CELL_TOTAL:
        raise InputError(f"{real.name}: a baseline cell totals {totals.max():.0f} counts, above "
                         f"{v.MAX_CELL_TOTAL:.0f} (scale up to {scale.max():.3g} on a gene)")
    codes = np.r_[np.repeat(np.arange(1, n_groups), n_per[1:]), np.zeros(ctrl.shape[0], np.int64)]
    return dataclasses.replace(real, name=f"{real.name} (baseline)", x=x, codes=codes)


def split_halves(sc: v.CountScreen, seed: int) -> tuple[v.CountScreen, v.CountScreen]:
    """Two disjoint halves of floor(n/2) cells per label, control included, as cell-eval2 cuts them."""
    names = np.r_[[sc.control], sc.perts]
    order = np.argsort(sc.codes, kind="stable")
    bounds = np.searchsorted(sc.codes[order], np.arange(len(names) + 1))
    rng = np.random.default_rng(seed)
    a_idx, b_idx = [], []
    for g in np.argsort(names, kind="stable"):  # labels in sorted order, the control's among them
        idx = order[bounds[g]:bounds[g + 1]]  # ascending cell positions, like pandas' groupby indices
        if len(idx) < 2:
            raise InputError(f"{sc.name}: {names[g]!r} has {len(idx)} cell(s); the "
                             "split-half replicate needs at least 2 per label")
        perm = rng.permutation(idx)
        h = len(idx) // 2
        a_idx.append(perm[:h])
        b_idx.append(perm[h:2 * h])

    def half(rows: np.ndarray, tag: str) -> v.CountScreen:
        return dataclasses.replace(sc, name=f"{sc.name} (half {tag})", x=sc.x[rows], codes=sc.codes[rows])

    return half(np.concatenate(a_idx), "A"), half(np.concatenate(b_idx), "B")


def replicate(real: v.CountScreen, real_side: v.Side, tcols: np.ndarray, *, base_seed: int = BASE_SEED,
              n_splits: int = N_SPLITS, workers: int = 2) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The replicate anchor: the mean over `n_splits` split-half aggregates (see the module docstring)."""
    seeds = [int(s) for s in np.random.SeedSequence(base_seed).generate_state(n_splits)]
    splits = []
    for seed in seeds:
        half_a, half_b = split_halves(real, seed)
        sa, sb = v.side(half_a, workers=workers), v.side(half_b, workers=workers)
        _, agg = v.score_sides(sb, sa, tcols, real.genes, control_source="pred")
        agg["de_wilcoxon_lfc_nmae"] = lfc_nmae_reference(real_side, sa, sb, tcols)
        bad = [m for m in SCORED if not math.isfinite(agg[m])]
        if bad:
            raise InputError(f"{real.name}: the split-half replicate (seed {seed}) has no value for {bad}: "
                             "the reference cannot anchor these metrics")
        splits.append(agg)
    return {m: float(np.mean([s[m] for s in splits])) for m in splits[0]}, splits


def lfc_nmae_reference(full: v.Side, a: v.Side, b: v.Side, tcols: np.ndarray) -> float:
    """Mean over perturbations of mean_g |lfc_A - lfc_B| / mean_g |lfc_full|, g in the full reference's gate
    (significant, finite LFC, not the target; at least 10 genes)."""
    axis = full.kept
    own = tcols[:, None] == np.flatnonzero(axis)[None, :]
    with np.errstate(invalid="ignore"):
        gate = (full.de.padj < v.ALPHA) & np.isfinite(full.de.lfc) & ~own
    la, lb = (np.nan_to_num(v.on_genes(h.de, h.kept, axis).lfc, nan=0.0, posinf=0.0, neginf=0.0) for h in (a, b))
    n_gate = gate.sum(axis=1)
    raws = []
    for i in np.flatnonzero(n_gate >= v.LFC_MIN_GATE):
        g = gate[i]
        den = np.abs(full.de.lfc[i, g]).mean()
        if math.isfinite(den) and den != 0.0:
            raws.append(np.abs(la[i, g] - lb[i, g]).mean() / den)
    return float(np.mean(raws)) if raws else float("nan")


def scale_scores(user: dict[str, float], base: dict[str, float], rep: dict[str, float]) -> dict[str, float]:
    """Each scored metric on the 0 = baseline, 1 = replicate scale, and their mean `avg_score`."""
    out = {}
    for m in SCORED:
        u, b, r = user[m], base[m], rep[m]
        lower = m in LOWER
        span = (b - r) if lower else (r - b)
        if not (math.isfinite(b) and math.isfinite(r) and math.isfinite(span) and span > 0):
            raise InputError(f"{m}: no usable scale (baseline {b!r}, replicate {r!r}): the replicate must beat "
                             "the baseline")
        if lower:
            low, high = LOWER[m]
            s = 1.0 - (u - r) / (b - r) if math.isfinite(u) else low
            out[m] = min(max(s, low), high)
        else:
            out[m] = (u - b) / (r - b) if math.isfinite(u) else (0.0 - b) / (r - b)
    out["avg_score"] = float(np.mean([out[m] for m in SCORED]))
    return out
