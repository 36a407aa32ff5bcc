"""values.detect_kind agrees with cell-eval; normalize_log1p matches a hand computation; nothing is modified in place."""

import numpy as np
import pytest
import scipy.sparse as sp
from random_screen import build_random_screen

from biojepac.data import schema
from biojepac.data.normalize import normalize_log1p, select_hvg
from biojepac.data.values import detect_kind


def _snapshot(adata):
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    return x.copy(), list(adata.var_names), dict(adata.uns), set(adata.layers.keys())


def _assert_unchanged(adata, snap):
    x, genes, uns, layers = snap
    now = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    np.testing.assert_array_equal(now, x)
    assert list(adata.var_names) == genes and dict(adata.uns) == uns and set(adata.layers.keys()) == layers


@pytest.mark.parametrize("counts", [True, False])
@pytest.mark.parametrize("dense", [True, False])
def test_detect_kind_agrees_with_cell_eval(counts, dense):
    cell_eval_utils = pytest.importorskip("cell_eval.utils")
    adata = build_random_screen(counts=counts)
    if dense:
        adata.X = adata.X.toarray()
    assert (detect_kind(adata.X) == "counts") == counts
    assert (detect_kind(adata.X) == "counts") == (not cell_eval_utils.guess_is_lognorm(adata.copy()))


def test_detect_kind_edge_cases():
    assert detect_kind(np.zeros((3, 4))) == "counts"  # all zero: counts, as cell-eval says
    assert detect_kind(np.array([[0.0, 3.0005]])) == "counts"  # within the 1e-3 tolerance
    assert detect_kind(np.array([[0.0, 3.002]])) == "log1p"


@pytest.mark.parametrize("target", ["median", 1e4])
def test_normalize_log1p_matches_hand_computation(target):
    adata = build_random_screen()
    snap = _snapshot(adata)
    out = normalize_log1p(adata, target=target)
    _assert_unchanged(adata, snap)
    counts = snap[0]
    totals = counts.sum(1, keepdims=True)
    want_sum = np.median(totals[totals > 0]) if target == "median" else 1e4
    want = np.log1p(counts / totals * want_sum)
    np.testing.assert_allclose(out.X.toarray(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), counts)
    tr = out.uns[schema.UNS_KEY]["transform"]
    assert tr["input"] == "counts" and tr["applied"] == "normalize_total+log1p"
    assert tr["target_sum"] == pytest.approx(want_sum)
    assert detect_kind(out.X) == "log1p"


def test_normalize_skips_log1p_input_and_records_it():
    adata = build_random_screen(counts=False)
    snap = _snapshot(adata)
    out = normalize_log1p(adata)
    _assert_unchanged(adata, snap)
    assert out is not adata
    np.testing.assert_array_equal(out.X.toarray(), snap[0])
    assert out.uns[schema.UNS_KEY]["transform"] == {"input": "log1p", "applied": "none"}
    assert "counts" not in out.layers


def test_expect_overrides_detection():
    adata = build_random_screen()  # integer counts...
    out = normalize_log1p(adata, expect="log1p")  # ...that the user says are log1p
    np.testing.assert_array_equal(out.X.toarray(), adata.X.toarray())


def test_select_hvg_picks_the_overdispersed_genes_on_a_copy():
    rng = np.random.default_rng(0)
    counts = build_random_screen(n_cells=400, n_genes=200)
    x = counts.X.toarray()
    # Genes 5, 50, 120: same mean as a Poisson gene of rate 4, but gamma-Poisson (very overdispersed).
    for g in (5, 50, 120):
        x[:, g] = rng.poisson(4.0 * rng.gamma(0.2, 5.0, size=x.shape[0]))
    for g in range(200):
        if g not in (5, 50, 120):
            x[:, g] = rng.poisson(4.0, size=x.shape[0])
    counts.X = sp.csr_matrix(x)
    adata = normalize_log1p(counts)
    snap = _snapshot(adata)
    out = select_hvg(adata, n_top=3, flavor="cell_ranger")  # equal-count mean bins: robust here
    _assert_unchanged(adata, snap)
    assert list(out.var_names) == [adata.var_names[g] for g in (5, 50, 120)]
    assert out.uns[schema.UNS_KEY]["hvg"] == {"n_top": 3, "flavor": "cell_ranger", "n_selected": 3}
    np.testing.assert_array_equal(out.X.toarray(), snap[0][:, [5, 50, 120]])
