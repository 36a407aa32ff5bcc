"""Vectorised Mann-Whitney vs scipy's, one (perturbation, gene) at a time, on data full of ties."""

import numpy as np
import scipy.stats

from biojepac.eval import mwu


def test_mwu_matches_scipy_asymptotic_with_ties_and_zeros():
    rng = np.random.default_rng(0)
    n_cells, n_genes = 260, 30
    codes = np.r_[np.zeros(100, np.int64), rng.integers(1, 5, n_cells - 100)]
    x = rng.poisson(rng.gamma(0.5, 1.0, n_genes), size=(n_cells, n_genes)).astype(np.float32)
    x[:, 0] = 0  # all zero: p = 1
    x[:, 1] = 2.0  # all tied, non-zero: p = 1
    x[codes == 3, 2] = 5.0  # one group constant
    x[:, 3] = np.round(rng.random(n_cells), 1)  # fractional values with many ties
    cols, rows = np.nonzero(x.T)
    n = np.bincount(codes)
    ours = mwu.mwu_pvalues(cols, x[rows, cols], codes[rows], n, n_genes)
    for g in range(1, 5):
        for j in range(n_genes):
            a, b = x[codes == g, j].astype(np.float64), x[codes == 0, j].astype(np.float64)
            if np.all(np.r_[a, b] == a[0]):
                ref = 1.0
            else:
                ref = scipy.stats.mannwhitneyu(a, b, use_continuity=True, method="asymptotic").pvalue
            assert abs(ours[g - 1, j] - ref) < 1e-12, (g, j, ours[g - 1, j], ref)
    # float64 values take the dense-rank key path: same answer.
    ours64 = mwu.mwu_pvalues(cols, x[rows, cols].astype(np.float64), codes[rows], n, n_genes)
    np.testing.assert_array_equal(ours64, ours)


def test_gene_blocks_and_threads_do_not_change_pvalues(screen_factory, monkeypatch):
    """Blocks of 16 genes (many blocks, run in 2 threads) give the same p-values, bit for bit, as one block."""
    from biojepac.eval import stats
    from biojepac.eval.inputs import read_screen

    screen = read_screen(screen_factory(1, n_genes=120), pert_col="target_gene", control="non-targeting")
    whole = stats.summarize(screen, with_de=True, n_threads=1).pval
    monkeypatch.setattr(stats, "BLOCK_ENTRIES", 1)  # clipped to the minimum block of 16 genes
    blocked = stats.summarize(screen, with_de=True, n_threads=2).pval
    np.testing.assert_array_equal(blocked, whole)
    assert (whole < 0.01).any() and (whole == 1.0).any()  # real effects and all-zero genes are both present


def test_bh_fdr_equals_scipy_bit_for_bit():
    rng = np.random.default_rng(3)
    p = rng.random((7, 300)) ** 3
    p[:, :40] = p[:, :1]  # ties
    p[0] = 1.0  # all tied at one
    p[1, 5] = 0.0
    ours = mwu.bh_fdr(p.copy())
    ref = scipy.stats.false_discovery_control(p, axis=-1, method="bh")
    assert np.array_equal(ours, ref)
