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


def _two_by_two(drop: tuple[str, str] | None = None, seed: int = 8):
    """A 2-context, 2-batch screen; `drop=(context, batch)` removes that batch's controls."""
    adata = build_random_screen(n_cells=800, contexts=("c1", "c2"), seed=seed)
    if drop is not None:
        obs = adata.obs
        gone = (obs["context"] == drop[0]) & (obs["batch"] == drop[1]) & (obs["target_gene"] == schema.CONTROL)
        adata = adata[~gone.to_numpy()].copy()
    return adata


def _rule_pools(obs: pd.DataFrame) -> list[set[int]]:
    """The rule written out cell by cell: controls of the same context and batch, else of the same context."""
    ctx, bat = obs["context"].astype(str).to_numpy(), obs["batch"].astype(str).to_numpy()
    is_ctrl = (obs["target_gene"].astype(str) == schema.CONTROL).to_numpy()
    pools = []
    for c, b in zip(ctx, bat):
        same = set(np.flatnonzero(is_ctrl & (ctx == c) & (bat == b)).tolist())
        pools.append(same or set(np.flatnonzero(is_ctrl & (ctx == c)).tolist()))
    return pools


def _slices(adata):
    obs = adata.obs
    return pairing.control_slices(obs["context"], obs["batch"], (obs["target_gene"] == schema.CONTROL).to_numpy(), "s.h5ad")


def test_control_slices_pair_within_context_and_batch():
    adata = _two_by_two()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every batch has controls: no warning
        pools = _slices(adata)
    want = _rule_pools(adata.obs)
    assert pools.same_batch.all()
    for i in range(adata.n_obs):
        assert set(pools.order[pools.offset[i] : pools.offset[i] + pools.count[i]].tolist()) == want[i]
    # draw() takes the slices: every draw lands in the cell's pool, and the draws cover it.
    cells = np.repeat(np.arange(adata.n_obs), 50)
    drawn = pools.draw(cells, np.random.default_rng(0).random(len(cells)))
    assert all(int(r) in want[c] for c, r in zip(cells, drawn))
    assert set(pools.draw(np.zeros(2000, np.int64), np.random.default_rng(1).random(2000)).tolist()) == want[0]


def test_control_slices_fall_back_to_the_context_with_a_warning_naming_the_batch():
    adata = _two_by_two(drop=("c2", "b1"))
    with pytest.warns(UserWarning, match="s.h5ad: batch 'b1' of context 'c2' has no 'non-targeting' cells") as record:
        pools = _slices(adata)
    assert len(record) == 1  # one warning per batch, not per cell
    obs = adata.obs.astype(str)
    lacking = ((obs["context"] == "c2") & (obs["batch"] == "b1")).to_numpy()
    assert np.array_equal(~pools.same_batch, lacking)
    want = _rule_pools(adata.obs)
    for i in np.flatnonzero(lacking):
        pool = pools.order[pools.offset[i] : pools.offset[i] + pools.count[i]]
        assert set(pool.tolist()) == want[i] and (obs["context"].to_numpy()[pool] == "c2").all()
        assert (obs["batch"].to_numpy()[pool] == "b0").all()  # the only batch of c2 with controls


def test_control_slices_never_cross_contexts():
    # c1's batch b1 has no controls while c2's b1 has some: c1-b1 cells still draw from c1 only.
    adata = _two_by_two(drop=("c1", "b1"), seed=9)
    with pytest.warns(UserWarning, match="batch 'b1' of context 'c1'"):
        pools = _slices(adata)
    ctx = adata.obs["context"].astype(str).to_numpy()
    for i in range(adata.n_obs):
        pool = pools.order[pools.offset[i] : pools.offset[i] + pools.count[i]]
        assert pools.count[i] > 0 and (ctx[pool] == ctx[i]).all()


def test_control_slices_context_without_controls_is_input_error():
    adata = _two_by_two()
    obs = adata.obs
    adata = adata[~((obs["context"] == "c2") & (obs["target_gene"] == schema.CONTROL)).to_numpy()].copy()
    with pytest.raises(InputError, match="s.h5ad: no 'non-targeting' cells in context 'c2'"):
        _slices(adata)


def test_state_sampler_and_jepa_pools_obey_the_rule():
    from biojepac.models.jepa import trainer as jepa_trainer
    from biojepac.features import resolve_features
    from biojepac.models.state import trainer as state_trainer

    adata = _two_by_two(drop=("c2", "b1"))
    obs = adata.obs.astype(str)
    want = _rule_pools(adata.obs)
    # STATE: every sentence's controls come from the pool of its (perturbation, context, batch) group.
    x = np.arange(adata.n_obs, dtype=np.float32)[:, None].repeat(3, 1)  # a cell's value is its row
    with pytest.warns(UserWarning, match="batch 'b1' of context 'c2'"):
        sampler = state_trainer.SentenceSampler(x, x, adata.obs, np.eye(5, dtype=np.float32), 8, 16, seed=0)
    n_fallback = 0
    for step in range(5):
        batch = sampler(step)
        for b in range(16):
            target, ctrl = batch["target"][b, :, 0].astype(int), batch["ctrl"][b, :, 0].astype(int)
            assert len(set(obs["context"].to_numpy()[target])) == len(set(obs["batch"].to_numpy()[target])) == 1
            assert set(ctrl.tolist()) <= want[target[0]]
            assert (obs["context"].to_numpy()[ctrl] == obs["context"].to_numpy()[target[0]]).all()
            n_fallback += obs["batch"].to_numpy()[target[0]] != obs["batch"].to_numpy()[ctrl[0]]
    assert n_fallback > 0  # the c2-b1 groups were sampled, and paired with c2-b0 controls
    # BioJEPAC: every cell's control slice (what its training batches draw from) is the rule's pool.
    with pytest.warns(UserWarning, match="batch 'b1' of context 'c2'"):
        scr = jepa_trainer.prepare_screen(adata, resolve_features(None, adata))
    order, offset, count = scr.controls.order, scr.controls.offset, scr.controls.count
    for i in range(adata.n_obs):
        assert set(order[offset[i] : offset[i] + count[i]].tolist()) == want[i]
    # Neither borrows controls from another context: a context without controls stops both.
    no_ctrl = adata[~((obs["context"] == "c1") & (obs["target_gene"] == schema.CONTROL)).to_numpy()].copy()
    x = x[: no_ctrl.n_obs]
    with pytest.raises(InputError, match="context 'c1'"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state_trainer.SentenceSampler(x, x, no_ctrl.obs, np.eye(5, dtype=np.float32), 8, 16, seed=0)
    with pytest.raises(InputError, match="context 'c1'"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jepa_trainer.prepare_screen(no_ctrl, resolve_features(None, no_ctrl))
