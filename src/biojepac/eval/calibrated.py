"""Calibrated metrics, as the field moved after VCC 2025, each also placed between a baseline and a ceiling.

- `pds_cosine`: PDS with cosine distance between effects (each file vs its own control), every gene that
  is the target of any perturbation in the screen left out (combos count both genes); 1 - rank / P with
  ties ranked as ties (midrank, as cell-eval2 ranks): a prediction with one effect for every perturbation
  scores the same for each, whatever their names (cell-eval 0.8.2's L1 PDS breaks ties by position).
- `de_jaccard`: |real DEGs ∩ predicted DEGs| / |union| (DEGs: BH FDR < 0.05, as for DES); 1 when both
  are empty (the prediction correctly calls nothing).
- `de_direction`: over real DEGs, the fraction whose predicted change has the same sign.
- `lfc_nmae`: over real DEGs, sum |Δpred - Δreal| / sum |Δreal|, Δ = log2 fold change of the geometric
  means, (mean log1p pert - mean log1p ctrl) / ln 2 (finite where pdex's LFC is ±inf). Lower is better.

Normalised value = (u - baseline) / (ceiling - baseline): 0 at the baseline, 1 at the ceiling. The ceiling
is the split-half replicate: the real cells of every group (controls included) split at random into two
disjoint halves of floor(n/2), one half scored as the prediction of the other. Each half has half the
cells, so its agreement understates what full depth allows; as cell-eval 0.8.2 does for its ceiling, the
mean r of the agreement metrics is mapped to full depth with the Spearman-Brown formula 2r / (1 + r) (NaN
when r <= 0: the halves do not agree, so there is no ceiling). `lfc_nmae` is an error, not an agreement,
so its ceiling stays the uncorrected split-half value.
"""

import numpy as np

from biojepac.data.schema import split_combo
from biojepac.eval.inputs import ScoredScreen
from biojepac.eval.stats import Summary
from biojepac.eval.vcc2026 import cosine_distances, sig_jaccard, true_midrank

NAMES = ("pds_cosine", "de_jaccard", "de_direction", "lfc_nmae")
LOWER_IS_BETTER = frozenset({"lfc_nmae"})
SPEARMAN_BROWN = frozenset({"pds_cosine", "de_jaccard", "de_direction"})


def calibrated_metrics(real: ScoredScreen, real_s: Summary, pred_s: Summary) -> dict[str, np.ndarray]:
    """Per-perturbation calibrated metrics (see module docstring)."""
    targets = {g for p in real.perts for g in split_combo(p)}
    keep = ~np.isin(real.genes, list(targets))
    dist = cosine_distances(pred_s.effects[:, keep], real_s.effects[:, keep])  # shared with VCC 2026's PDS
    rs, ps = real_s.significant, pred_s.significant
    dr, dp = real_s.effects / np.log(2), pred_s.effects / np.log(2)
    n_sig = rs.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "pds_cosine": 1.0 - true_midrank(dist) / len(dist),
            "de_jaccard": sig_jaccard(rs, ps),
            "de_direction": np.where(n_sig > 0, (rs & (np.sign(dp) == np.sign(dr))).sum(1) / n_sig, np.nan),
            "lfc_nmae": (rs * np.abs(dp - dr)).sum(1) / (rs * np.abs(dr)).sum(1),
        }


def split_halves(real: ScoredScreen, seed: int) -> tuple[ScoredScreen, ScoredScreen]:
    """Two disjoint halves of floor(n/2) cells of every group (groups of one cell appear in neither).
    Each half keeps the file's cell order."""
    rng = np.random.default_rng(seed)
    half_of = np.full(len(real.codes), 2, np.int8)  # 0 = half A, 1 = half B, 2 = neither
    for code in range(len(real.perts) + 1):
        rows = rng.permutation(np.flatnonzero(real.codes == code))
        h = len(rows) // 2
        half_of[rows[:h]], half_of[rows[h : 2 * h]] = 0, 1
    return tuple(  # type: ignore[return-value]
        ScoredScreen(f"{real.name} (half {tag})", real.x[rows], real.codes[rows], real.perts, real.genes, real.was_counts)
        for tag, rows in zip("AB", (np.flatnonzero(half_of == 0), np.flatnonzero(half_of == 1)))
    )  # each half keeps the file's row order


def full_depth_ceiling(split_half_means: dict[str, float]) -> dict[str, float]:
    """The ceiling per metric from the split-half means: Spearman-Brown 2r / (1 + r) for the agreement
    metrics (NaN where r <= 0), the split-half value as it is for the others."""
    out = {}
    for name, r in split_half_means.items():
        if name in SPEARMAN_BROWN:
            out[name] = 2.0 * r / (1.0 + r) if r > 0 else float("nan")
        else:
            out[name] = r
    return out


def normalise(user: float, base: float, ceiling: float) -> float:
    """(u - b) / (c - b); NaN when the ceiling does not beat the baseline."""
    gap = ceiling - base
    return float((user - base) / gap) if np.isfinite(gap) and gap != 0 else float("nan")
