"""Bootstrap confidence intervals over perturbations (the unit that varies between screens)."""

from collections.abc import Callable

import numpy as np


def resample_idx(n_perts: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot x n_perts) indices drawn with replacement; the same seed gives the same draws."""
    return np.random.default_rng(seed).integers(0, n_perts, size=(n_boot, n_perts))


def ci(stat: Callable[[np.ndarray], np.ndarray], idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `stat(idx) -> (n_boot,)`, ignoring NaN draws."""
    draws = stat(idx)
    lo, hi = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_ci(values: np.ndarray, idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Interval for the mean over perturbations of one per-perturbation metric (NaNs ignored)."""
    with np.errstate(invalid="ignore"):
        return ci(lambda i: np.nanmean(values[i], axis=1), idx, level)
