"""The synthetic screen: schema, determinism, causal structure, and truth vs the counts it produces."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.data.pairing import pseudobulk_deltas
from biojepac.data.synthetic import PRESETS, get_screen_preset, make_synthetic_screen


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic_screen(get_screen_preset("tiny", n_combos=4), seed=0)


def _truth_for(adata, groups: pd.DataFrame):
    """Truth rows (delta, has_effect) aligned with pseudobulk groups."""
    truth = adata.uns[schema.UNS_KEY]["truth"]
    key = pd.MultiIndex.from_arrays([np.asarray(truth["context"]), np.asarray(truth["target_gene"])])
    rows = key.get_indexer(pd.MultiIndex.from_frame(groups[[schema.CONTEXT_COL, schema.PERT_COL]]))
    assert (rows >= 0).all(), "every observed (context, perturbation) has a truth row"
    return truth["delta"][rows], truth["has_effect"][rows]


def test_canonical_schema(tiny):
    obs = tiny.obs
    assert sp.isspmatrix_csr(tiny.X) and tiny.X.dtype == np.float32
    assert np.array_equal(tiny.X.data, np.round(tiny.X.data)) and tiny.X.data.min() >= 0
    assert list(tiny.var_names[:2]) == ["SYN0001", "SYN0002"] and tiny.var_names.is_unique
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL, schema.GUIDE_COL, schema.PERT_TYPE_COL):
        assert col in obs.columns
    assert set(obs[schema.PERT_TYPE_COL]) == {"CRISPRi"}
    assert set(obs[schema.CONTEXT_COL]) == {"ctx0", "ctx1"}
    is_ctrl = obs[schema.PERT_COL] == schema.CONTROL
    for _, ctx_obs in obs.groupby(schema.CONTEXT_COL, observed=True):
        share = (ctx_obs[schema.PERT_COL] == schema.CONTROL).mean()
        assert 0.15 < share < 0.25, share  # control_fraction=0.2
        assert ctx_obs[schema.BATCH_COL].nunique() == 2
    singles = obs[~is_ctrl & ~obs[schema.PERT_COL].astype(str).str.contains("+", regex=False)]
    assert singles.groupby(schema.PERT_COL, observed=True)[schema.GUIDE_COL].nunique().min() >= 2
    assert (obs[schema.PERT_COL].astype(str).str.count(r"\+") == 1).groupby(obs[schema.CONTEXT_COL], observed=True).any().all()
    assert tiny.varm["network_features"].shape == (60, 8)
    truth = tiny.uns[schema.UNS_KEY]["truth"]
    assert truth["delta"].shape == (2 * (12 + 4), 60) and truth["delta"].dtype == np.float32


def test_deterministic_per_seed(tiny):
    again = make_synthetic_screen(get_screen_preset("tiny", n_combos=4), seed=0)
    other = make_synthetic_screen(get_screen_preset("tiny", n_combos=4), seed=1)
    assert (tiny.X != again.X).nnz == 0
    assert tiny.obs.equals(again.obs)
    assert np.array_equal(tiny.uns[schema.UNS_KEY]["truth"]["delta"], again.uns[schema.UNS_KEY]["truth"]["delta"])
    assert np.array_equal(tiny.varm["network_features"], again.varm["network_features"])
    assert tiny.X.shape != other.X.shape or (tiny.X != other.X).nnz > 0


def test_knockdown_propagates_through_the_network():
    adata = make_synthetic_screen(get_screen_preset("tiny", n_genes=80, n_perts=30, n_contexts=2, cells_per_pert=4), seed=3)
    genes = list(adata.var_names)
    truth, net = adata.uns[schema.UNS_KEY]["truth"], adata.uns[schema.UNS_KEY]["network"]
    n_with_children = 0
    for i, (ctx, label) in enumerate(zip(truth["context"], truth["target_gene"])):
        delta, c = truth["delta"][i], int(ctx[-1])
        if not truth["has_effect"][i]:
            assert np.all(delta == 0.0), f"no-effect {label} in {ctx} must have an exactly zero truth"
            continue
        t = genes.index(label)
        assert delta[t] < 0, "CRISPRi lowers its target"
        # Descendants of the target in this context's graph, by breadth-first search over the stored edges.
        live = np.asarray(net["context"]) == ctx
        reg = np.array([genes.index(g) for g in net["regulator"]])[live]
        tgt = np.array([genes.index(g) for g in net["target"]])[live]
        desc, frontier = set(), {t}
        while frontier:
            frontier = set(tgt[np.isin(reg, list(frontier))]) - desc
            desc |= frontier
        outside = np.setdiff1d(np.arange(len(genes)), list(desc | {t}))
        # Genes outside the cascade keep their expression; only the composition's total changes, so their
        # ratio to the control is one shared constant, while descendants move by their own amounts.
        ctrl = truth["control_log1p"][c]
        ratio = np.expm1(ctrl + delta) / np.maximum(np.expm1(ctrl), 1e-12)
        expressed_out = outside[ctrl[outside] > 0]
        common = np.median(ratio[expressed_out])
        assert np.allclose(ratio[expressed_out], common, rtol=1e-2)
        if desc:
            n_with_children += 1
            desc_expr = [g for g in desc if ctrl[g] > 0]
            assert not desc_expr or np.abs(np.log(ratio[desc_expr] / common)).max() > 0.05
        # The target's ratio is a weighted mean of its guides' (1 - efficiency), so it lies between them.
        kept = 1.0 - truth["guide_efficiency"][list(truth["guide_target"]).index(label)]
        assert kept.min() - 1e-3 <= ratio[t] / common <= kept.max() + 1e-3
    assert n_with_children >= 10


def test_truth_matches_empirical_pseudobulk():
    """The done criterion: stored truth vs normalize_total(1e4)+log1p pseudobulk deltas of the counts."""
    cfg = get_screen_preset("tiny", cells_per_pert=200, control_fraction=0.5, inert_fraction=0.3)
    adata = make_synthetic_screen(cfg, seed=0)
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=cfg.target_sum)
    sc.pp.log1p(norm)
    groups, emp = pseudobulk_deltas(norm)
    true_delta, has_effect = _truth_for(adata, groups)
    assert 2 <= (~has_effect).sum() and has_effect.sum() >= 10
    r = np.array([np.corrcoef(t, e)[0, 1] for t, e in zip(true_delta[has_effect], emp[has_effect])])
    assert r.mean() > 0.95 and r.min() > 0.8, r
    # No-effect perturbations: the truth is zero and the measured delta is pure noise, so two disjoint halves
    # of the cells (controls included, so no noise is shared) do not agree, unlike effect perturbations.
    half = np.random.default_rng(0).random(norm.n_obs) < 0.5
    (g_a, d_a), (g_b, d_b) = pseudobulk_deltas(norm[half]), pseudobulk_deltas(norm[~half])
    assert g_a.drop(columns="n_cells").equals(g_b.drop(columns="n_cells"))
    split_r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(d_a, d_b)])
    assert np.abs(split_r[~has_effect]).mean() < 0.3 and split_r[has_effect].mean() > 0.6, split_r
    assert np.abs(np.corrcoef(true_delta[has_effect].ravel(), emp[has_effect].ravel())[0, 1]) > 0.9


def _ridge_error(x_tr, x_te, y_tr, y_te) -> float:
    coef = np.linalg.solve(x_tr.T @ x_tr + 10.0 * np.eye(x_tr.shape[1]), x_tr.T @ (y_tr - y_tr.mean(0)))
    return float(np.mean((y_tr.mean(0) + x_te @ coef - y_te) ** 2))


def test_network_features_predict_unseen_effects():
    """Ridge from features to off-target truth, fitted on 70% of targets, beats the mean and shuffled features."""
    ratios_mean, ratios_shuffled = [], []
    for seed in (0, 1):
        cfg = get_screen_preset("tiny", n_genes=200, n_perts=120, n_contexts=1, cells_per_pert=2, n_features=16)
        adata = make_synthetic_screen(cfg, seed=seed)
        truth = adata.uns[schema.UNS_KEY]["truth"]
        keep = np.asarray(truth["has_effect"])
        tidx = adata.var_names.get_indexer(np.asarray(truth["target_gene"])[keep])
        delta = truth["delta"][keep].copy()
        delta[np.arange(len(delta)), tidx] = 0.0  # the target's own drop is known; predict the cascade
        feats = adata.varm["network_features"] / adata.varm["network_features"].std(0).clip(1e-9)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(delta))
        tidx, delta = tidx[perm], delta[perm]
        n_tr = int(0.7 * len(delta))
        y_tr, y_te = delta[:n_tr], delta[n_tr:]
        err = _ridge_error(feats[tidx[:n_tr]], feats[tidx[n_tr:]], y_tr, y_te)
        shuffled = feats[rng.permutation(len(feats))]
        ratios_shuffled.append(err / _ridge_error(shuffled[tidx[:n_tr]], shuffled[tidx[n_tr:]], y_tr, y_te))
        ratios_mean.append(err / np.mean((y_tr.mean(0) - y_te) ** 2))
    assert np.mean(ratios_mean) < 0.85 and np.mean(ratios_shuffled) < 0.85, (ratios_mean, ratios_shuffled)


def test_presets_are_ordered_by_size():
    sizes = [PRESETS[name].n_genes * PRESETS[name].n_perts * PRESETS[name].n_contexts for name in ("tiny", "demo", "realistic")]
    assert sizes == sorted(sizes)
    real = PRESETS["realistic"]
    assert (real.n_genes, real.n_perts, real.n_contexts) == (2000, 300, 3) and real.cells_per_pert >= 100
    assert dataclasses.is_dataclass(real)


def test_cli_synth_and_split_round_trip(tmp_path):
    """`biojepac data synth` writes the same screen as the API; `biojepac data split` splits it without leaks."""
    import anndata as ad

    from biojepac.cli import main
    from biojepac.data.splits import load_split

    h5ad_fpath, split_fpath = tmp_path / "s.h5ad", tmp_path / "split.json"
    assert main(["data", "synth", "--out", str(h5ad_fpath), "--screen-preset", "tiny", "--seed", "2"]) == 0
    written = ad.read_h5ad(h5ad_fpath)
    expected = make_synthetic_screen(get_screen_preset("tiny"), seed=2)
    assert (written.X != expected.X).nnz == 0 and written.obs.equals(expected.obs.astype(written.obs.dtypes.to_dict()))
    np.testing.assert_array_equal(written.uns[schema.UNS_KEY]["truth"]["delta"], expected.uns[schema.UNS_KEY]["truth"]["delta"])
    args = ["data", "split", "--screen", str(h5ad_fpath), "--out", str(split_fpath)]
    assert main(args + ["--kind", "fewshot_context", "--context", "ctx1", "--k", "3"]) == 0
    split = load_split(split_fpath)
    assert sum(c == "ctx1" for c, _ in split.train) == 3
    assert main(args + ["--kind", "zeroshot_context"]) == 2  # needs --context: one-line error, no traceback


def test_synth_removes_a_killed_runs_temporary_file(tmp_path):
    from test_io import dead_pid

    from biojepac.data.synthetic import SynthCommand, run_synth

    (tmp_path / f".s.h5ad.tmp{dead_pid()}.h5ad").write_text("half a file")
    run_synth(SynthCommand(out=tmp_path / "s.h5ad", screen_preset="tiny"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5ad"]
