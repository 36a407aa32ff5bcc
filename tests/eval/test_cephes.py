"""Our compiled erfc is scipy's, bit for bit, so the Mann-Whitney p-values need no scipy."""

import numpy as np
import pytest
import scipy.special

from biojepac.eval import cephes

EDGES = [0.0, -0.0, 1.0, -1.0, 8.0, -8.0, np.inf, -np.inf, 1e-300, 5e-324, 26.6417, 37.5, 1e308]


def _arguments() -> np.ndarray:
    """Each branch and the boundaries between them: |x| < 1 (1 - erf), 1 <= |x| < 8, |x| >= 8, and where
    exp(-x^2) would be subnormal (x near sqrt(MAXLOG))."""
    rng = np.random.default_rng(0)
    edge = np.array(EDGES)
    near = np.r_[np.nextafter(edge, np.inf), np.nextafter(edge, -np.inf)]
    cut = np.sqrt(cephes.MAXLOG) + np.arange(-200, 200) * 4e-15
    return np.r_[rng.uniform(-40, 40, 400_000), rng.normal(0, 3, 400_000), rng.uniform(-1.01, 1.01, 100_000),
                 rng.uniform(7.9, 8.1, 100_000), edge, near, cut, -cut]


def _assert_bits_equal(ours: np.ndarray, ref: np.ndarray) -> None:
    same = (ours.view(np.int64) == ref.view(np.int64)) | (np.isnan(ours) & np.isnan(ref))
    assert same.all(), f"{int((~same).sum())} differ, e.g. erfc at {np.flatnonzero(~same)[:3]}"


@pytest.mark.parametrize("path", ["as called", "just in time"])
def test_erfc_equals_scipy_bit_for_bit(path):
    x = _arguments()
    if path == "as called":  # the build made ahead of time, when there is one
        ours = cephes.erfc(x)
    else:
        ours = np.array(x, ndmin=2)
        cephes.erfc_columns.jit(ours, 0, ours.shape[1], *cephes.COEFFICIENTS)
        ours = ours.reshape(-1)
    _assert_bits_equal(ours, scipy.special.erfc(x))


def test_nan_stays_nan_and_columns_outside_the_range_are_untouched():
    a = np.array([[np.nan, 0.5, 2.0, 9.0], [3.0, -0.5, -2.0, -9.0]])
    before = a.copy()
    cephes.erfc_columns(a, 1, 3, *cephes.COEFFICIENTS)
    assert np.isnan(a[0, 0]) and a[1, 0] == before[1, 0] and (a[:, 3] == before[:, 3]).all()
    _assert_bits_equal(a[:, 1:3], scipy.special.erfc(before[:, 1:3]))
