"""The BioJEPAC report's metrics (GEARS-style), all on pseudobulks against the REAL control mean.

Using the real control for both files (as GEARS does with its control mean) means a prediction cannot
move these numbers by editing its own control cells.

DEGs are defined as GEARS defines them: scanpy `rank_genes_groups` with its default Welch t-test of each
perturbation's cells vs the control cells, ranked by |t| (`rankby_abs=True`), top k; here computed from the
real file's group means and variances in closed form.
"""

import numpy as np
from jaxtyping import Float, Int
import beartype

from biojepac.eval.stats import Summary


@beartype.beartype  # each array's dtype and rank; `jaxtyped` would import JAX (1.6 s) into every evaluate
def gears_degs(real: Summary, k: int) -> Int[np.ndarray, "perts k"]:
    """Indices of the top-k genes per perturbation by |Welch t| vs control (NaN t -> 0, as scanpy)."""
    n = real.n.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (real.mean[1:] - real.mean[:1]) / np.sqrt(real.var[1:] / n[1:] + real.var[:1] / n[:1])
    t = np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    k = min(k, t.shape[1])
    return np.argsort(-np.abs(t), axis=1, kind="stable")[:, :k]


def pearson_rows(a: Float[np.ndarray, "p g"], b: Float[np.ndarray, "p g"]) -> np.ndarray:
    """Pearson correlation per row; NaN when a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def r2_rows(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """sklearn's r2_score per row (genes are the samples): 1 - SS_res / SS_tot."""
    ss_res = ((real - pred) ** 2).sum(1)
    ss_tot = ((real - real.mean(axis=1, keepdims=True)) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - ss_res / ss_tot


def report_metrics(real: Summary, pred: Summary, *, k_pearson: int = 20, k_r2: int = 50) -> dict[str, np.ndarray]:
    """Per-perturbation report metrics. `mse` averaged over perturbations is the global MSE (equal gene counts)."""
    ctrl = real.mean[:1]
    r, p = real.mean[1:], pred.mean[1:]
    d_real, d_pred = r - ctrl, p - ctrl
    top_p, top_r = gears_degs(real, k_pearson), gears_degs(real, k_r2)
    pick = lambda m, idx: np.take_along_axis(m, idx, axis=1)  # noqa: E731
    return {
        "mse": ((p - r) ** 2).mean(axis=1),
        "pearson_delta": pearson_rows(d_pred, d_real),
        f"pearson_delta_top{k_pearson}": pearson_rows(pick(d_pred, top_p), pick(d_real, top_p)),
        "r2": r2_rows(r, p),
        f"r2_top{k_r2}": r2_rows(pick(r, top_r), pick(p, top_r)),
        "shift_magnitude": np.abs(d_pred).mean(axis=1),
        "real_shift_magnitude": np.abs(d_real).mean(axis=1),
    }
