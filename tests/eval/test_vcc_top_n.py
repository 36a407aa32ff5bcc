"""DES's top-N cut: genes whose approximate |LFC| sits at the cut are ordered by pdex's exact LFC; PDS's
distances are exact sums in gene order."""

import numpy as np

from biojepac.eval import vcc
from biojepac.eval.vcc import _top_n


def test_genes_at_the_cut_are_ordered_by_exact_lfc_ties_in_gene_order():
    genes = np.array([2, 5, 7, 9, 11])
    approx = np.array([3.0, 1.0, 1.0 + 1e-9, 1.0, 0.2])  # 5, 7 and 9 tie within tolerance at the cut
    exact = {5: -1.2, 7: 1.1, 9: 1.2}  # |exact|: 9 and 5 tie at the top, 9 comes later in gene order
    calls = []

    def exact_lfc(g):
        calls.append(list(g))
        return np.array([exact[int(x)] for x in g], np.float32)

    assert sorted(_top_n(genes, approx, 2, exact_lfc)) == [2, 5]
    assert sorted(_top_n(genes, approx, 3, exact_lfc)) == [2, 5, 9]
    assert calls == [[5, 7, 9], [5, 7, 9]]


def test_no_exact_lfc_when_every_gene_at_the_cut_is_in():
    genes = np.array([1, 2, 3])
    approx = np.array([2.0, 1.0, 1.0])

    def fail(g):
        raise AssertionError("exact LFC not needed")

    assert sorted(_top_n(genes, approx, 3, fail)) == [1, 2, 3]
    assert sorted(_top_n(genes, np.array([3.0, 2.0, 0.5]), 2, fail)) == [1, 2]


def test_pds_distances_are_sums_in_gene_order_for_any_number_of_perturbations():
    """PDS's L1 distances, four real perturbations per pass over the genes, equal one sequential sum in
    gene order per pair, bit for bit, the excluded gene left out; also when the count is not a multiple of 4."""
    rng = np.random.default_rng(7)
    for n_real in (1, 2, 3, 5, 8):
        pred, real = rng.normal(size=(n_real, 37)), rng.normal(size=(n_real, 37)) * 1e3
        exclude = np.zeros((n_real, 37), bool)
        exclude[np.arange(n_real), rng.integers(0, 37, n_real)] = True
        dist = vcc._l1_distances(pred, real, exclude)
        for i in range(n_real):
            for j in range(n_real):
                total = 0.0
                for g in np.flatnonzero(~exclude[i]):
                    total += abs(real[j, g] - pred[i, g])
                assert dist[i, j] == total, (n_real, i, j)
