"""Vectorised Mann-Whitney vs scipy's, one (perturbation, gene) at a time, on data full of ties."""

import dataclasses

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


def test_threads_and_layouts_do_not_change_pvalues(screen_factory, monkeypatch):
    """1 or 3 worker threads, one range of genes or many small ones, blocks of 1 or 8 genes, int32 or int64
    keys, CSR, CSC or dense input: the same sums and p-values, bit for bit."""
    import scipy.sparse as sp

    from biojepac.eval import stats
    from biojepac.eval.inputs import read_scored_screen

    screen = read_scored_screen(screen_factory(1, n_genes=120), pert_col="target_gene", control="non-targeting")
    whole = stats.summarize(screen, with_de=True, workers=1)
    for range_keys, block_keys, key32_bits in ((500, 1, 31), (2000, 4000, 31), (2000, 4000, 0), (700, 1, 0)):
        monkeypatch.setattr(mwu, "RANGE_KEYS", range_keys)
        monkeypatch.setattr(mwu, "BLOCK_KEYS", block_keys)
        monkeypatch.setattr(mwu, "KEY32_BITS", key32_bits)
        for x in (screen.x, sp.csc_matrix(screen.x).tocsr(), screen.x.toarray()):
            other = stats.summarize(dataclasses.replace(screen, x=x), with_de=True, workers=3)
            np.testing.assert_array_equal(other.pval, whole.pval)
            np.testing.assert_array_equal(other.mean, whole.mean)
    without_de = stats.summarize(screen, with_de=False)
    np.testing.assert_allclose(without_de.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(without_de.var, whole.var, rtol=1e-9, atol=1e-12)
    assert (whole.pval < 0.01).any() and (whole.pval == 1.0).any()  # real effects and all-zero genes


def test_pdex_lfc_is_float32_row_order_mean():
    """The exact LFC used at DES's top-N cut: float32 sums of value * (1/n) in row order (sparse), or sums
    then one division (dense), then the C library's expm1f; the same for CSR and dense input."""
    import scipy.sparse as sp

    from biojepac.eval import stats
    from biojepac.eval.inputs import ScoredScreen

    rng = np.random.default_rng(4)
    dense = (rng.random((300, 40)) < 0.4) * rng.gamma(1.0, 1.0, (300, 40)).astype(np.float32)
    codes = rng.integers(0, 4, 300)
    genes = np.array([3, 17, 0, 39])

    def reference(sparse: bool, code: int) -> np.ndarray:
        rows = dense[codes == code]
        acc = np.zeros(40, np.float32)
        if sparse:
            for row in rows:
                acc += row * np.float32(1.0 / len(rows))
        else:
            for row in rows:
                acc += row
            acc = (acc.astype(np.float64) / len(rows)).astype(np.float32)
        return stats._expm1f(acc).astype(np.float64)

    for sparse, x in ((True, sp.csr_matrix(dense)), (False, dense)):
        lfc = stats.pdex_lfc(ScoredScreen("t", x, codes, np.array(["a", "b", "c"]), np.arange(40).astype(str), False))
        for code in (1, 3):
            with np.errstate(divide="ignore", invalid="ignore"):
                want = np.log2(reference(sparse, code)[genes] / reference(sparse, 0)[genes])
            np.testing.assert_array_equal(lfc(code, genes), np.where(np.isnan(want), 0.0, want).astype(np.float32))


def test_bh_significant_equals_full_bh_cut():
    """The shortcut that sorts only small p-values gives exactly scipy's BH FDR, as float32, < 0.05 (what
    pdex and cell-eval compute), including ties, all-one rows and BH values next to the cut."""
    rng = np.random.default_rng(8)
    alpha = np.float32(0.05)
    p = rng.random((40, 500)) ** rng.uniform(1, 12, (40, 1))
    p[:, :30] = p[:, :1]  # ties
    p[0] = 1.0
    p[1] = 0.0
    m = p.shape[1]
    p[2, :10] = 0.05 * np.arange(1, 11) / m * np.array([1 - 1e-9, 1, 1 + 1e-9, 1, 1, 1, 1, 1, 1, 1])  # at the cut
    full = scipy.stats.false_discovery_control(p, axis=-1, method="bh").astype(np.float32) < alpha
    assert full.any() and not full.all()
    np.testing.assert_array_equal(mwu.bh_significant(p, alpha), full)
