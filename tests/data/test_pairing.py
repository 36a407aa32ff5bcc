"""Pseudobulk means/deltas against a dense numpy reference, and control pairing invariants."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.data import pairing, schema
from biojepac.errors import InputError
from random_screen import build_random_screen


def _reference_means(adata, keys):
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    obs = adata.obs[list(keys)].astype(str)
    out = {}
    for key, idx in obs.groupby(list(keys)).indices.items():
        out[key if isinstance(key, tuple) else (key,)] = (len(idx), x[idx].astype(np.float64).mean(0))
    return out


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("keys", [("context", "target_gene"), ("target_gene",), ("context", "batch", "target_gene")])
def test_pseudobulk_matches_dense_reference(dense, keys):
    adata = build_random_screen(n_cells=400, n_genes=30, n_perts=6, contexts=("c1", "c2"), seed=1)
    if dense:
        adata.X = adata.X.toarray()
    groups, means = pairing.pseudobulk(adata, keys)
    ref = _reference_means(adata, keys)
    assert len(groups) == len(ref) and means.dtype == np.float64
    assert list(map(tuple, groups[list(keys)].to_numpy())) == sorted(ref)
    for row, key in enumerate(map(tuple, groups[list(keys)].to_numpy())):
        assert groups["n_cells"][row] == ref[key][0]
        np.testing.assert_allclose(means[row], ref[key][1], rtol=1e-6)


def test_pseudobulk_backed_chunked_equals_in_memory(tmp_path, monkeypatch):
    adata = build_random_screen(n_cells=300, n_genes=20, contexts=("c1", "c2"), seed=2)
    fpath = tmp_path / "s.h5ad"
    adata.write_h5ad(fpath)
    monkeypatch.setattr(pairing, "BACKED_CHUNK_ROWS", 37)  # several uneven chunks
    backed = ad.read_h5ad(fpath, backed="r")
    g1, m1 = pairing.pseudobulk(backed)
    g2, m2 = pairing.pseudobulk(adata)
    assert g1.equals(g2)
    np.testing.assert_allclose(m1, m2, rtol=1e-10)
    backed.file.close()


def test_pseudobulk_never_densifies():
    # 200k x 50k dense would be 40 GB; the sparse product needs only the nonzeros.
    n, g = 200_000, 50_000
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), rng.integers(0, g, n))), shape=(n, g))
    obs = pd.DataFrame({"context": "c", "target_gene": np.where(np.arange(n) % 2 == 0, schema.CONTROL, "A")}, index=np.arange(n).astype(str))
    groups, means = pairing.pseudobulk(ad.AnnData(X=x, obs=obs))
    assert means.shape == (2, g)
    np.testing.assert_allclose(means.sum(1), 1.0)  # each row mean of one-hot rows sums to one


def test_pseudobulk_deltas_subtract_same_context_controls():
    adata = build_random_screen(n_cells=500, n_genes=25, n_perts=5, contexts=("c1", "c2"), seed=3)
    groups, deltas = pairing.pseudobulk_deltas(adata)
    ref = _reference_means(adata, ("context", "target_gene"))
    assert schema.CONTROL not in set(groups["target_gene"])
    assert len(groups) == sum(k[1] != schema.CONTROL for k in ref)
    for row, (ctx, pert) in enumerate(map(tuple, groups[["context", "target_gene"]].to_numpy())):
        np.testing.assert_allclose(deltas[row], ref[(ctx, pert)][1] - ref[(ctx, schema.CONTROL)][1], atol=1e-9)
    # With batch in the keys the reference is still every control of the context, not of the batch.
    g_b, d_b = pairing.pseudobulk_deltas(adata, ("context", "batch", "target_gene"))
    ctx_b = _reference_means(adata, ("context", "batch", "target_gene"))
    ctx, batch, pert = g_b.iloc[0][["context", "batch", "target_gene"]]
    np.testing.assert_allclose(d_b[0], ctx_b[(ctx, batch, pert)][1] - ref[(ctx, schema.CONTROL)][1], atol=1e-9)


def test_pseudobulk_deltas_context_without_controls_names_it():
    adata = build_random_screen(n_cells=200, contexts=("c1", "c2"), seed=4)
    adata = adata[~((adata.obs["context"] == "c2") & (adata.obs["target_gene"] == schema.CONTROL))].copy()
    with pytest.raises(InputError, match="context 'c2'"):
        pairing.pseudobulk_deltas(adata)


def test_pair_controls_same_context_and_batch_and_deterministic():
    adata = build_random_screen(n_cells=600, contexts=("c1", "c2"), seed=5)
    paired = pairing.pair_controls(adata, seed=0)
    obs = adata.obs.astype(str)
    is_ctrl = (obs["target_gene"] == schema.CONTROL).to_numpy()
    assert np.all(paired[is_ctrl] == -1) and np.all(paired[~is_ctrl] >= 0)
    partner = obs.iloc[paired[~is_ctrl]]
    assert (partner["target_gene"] == schema.CONTROL).all()
    assert (partner["context"].to_numpy() == obs["context"].to_numpy()[~is_ctrl]).all()
    assert (partner["batch"].to_numpy() == obs["batch"].to_numpy()[~is_ctrl]).all()
    assert np.array_equal(paired, pairing.pair_controls(adata, seed=0))
    assert not np.array_equal(paired, pairing.pair_controls(adata, seed=1))
    assert len(np.unique(paired[~is_ctrl])) > 0.3 * is_ctrl.sum()  # draws spread over the pool


def test_pair_controls_falls_back_with_warning_naming_batch():
    adata = build_random_screen(n_cells=400, contexts=("c1",), seed=6)
    drop = (adata.obs["batch"] == "b1") & (adata.obs["target_gene"] == schema.CONTROL)
    adata = adata[~drop.to_numpy()].copy()
    with pytest.warns(UserWarning, match="batch 'b1'"):
        paired = pairing.pair_controls(adata, seed=0)
    obs = adata.obs.astype(str)
    in_b1 = ((obs["batch"] == "b1") & (obs["target_gene"] != schema.CONTROL)).to_numpy()
    assert (obs.iloc[paired[in_b1]]["batch"] == "b0").all()  # only b0 has controls
    in_b0 = ((obs["batch"] == "b0") & (obs["target_gene"] != schema.CONTROL)).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (obs.iloc[pairing.pair_controls(adata, seed=0)[in_b0]]["batch"] == "b0").all()


def test_pair_controls_context_without_controls_is_input_error():
    adata = build_random_screen(n_cells=200, contexts=("c1", "c2"), seed=7)
    adata = adata[~((adata.obs["context"] == "c1") & (adata.obs["target_gene"] == schema.CONTROL))].copy()
    with pytest.raises(InputError, match="context 'c1'"):
        pairing.pair_controls(adata, seed=0)
