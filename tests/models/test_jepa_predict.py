"""BioJEPAC's predict stage as numerical contracts, on a synthetic screen of 36 knockdowns: the prior
and predictor fit what they have seen, the loss is stationary at the truth, the control action is the
identity, the EMA teacher forgets its init, the target gene goes down, and what cannot generalise
does not pretend to (shuffled labels, one-hot IDs)."""

import dataclasses

import jax
import numpy as np
import pytest

from biojepac.data.normalize import normalize_log1p
from biojepac.data.schema import CONTROL
from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen
from biojepac.features.base import GeneTable
from biojepac.models.jepa import stages, trainer
from biojepac.models.jepa.config import get_preset
from biojepac.models.jepa.model import BioJepacModel
from biojepac.models.jepa.network import log_library
from biojepac.models.jepa.prior import fit_prior, ridge_loo
from biojepac.train import ema

TINY = get_preset("tiny")


def _screen(seed: int = 0):
    cfg = get_screen_preset("tiny", n_genes=80, n_perts=36, n_contexts=1, cells_per_pert=24, n_features=8)
    return normalize_log1p(make_synthetic_screen(cfg, seed=seed), 1e4)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    adata = _screen()
    perts = sorted(set(adata.obs["target_gene"]) - {CONTROL})
    test = perts[:6]
    train = adata[~adata.obs["target_gene"].isin(test).to_numpy()].copy()
    model = BioJepacModel(TINY, "varm:network_features", tmp_path_factory.mktemp("bj")).fit(train)
    return adata, train, test, model


def _deltas(adata, model, perts):
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X)
    labels = adata.obs["target_gene"].to_numpy()
    ctrl = x[labels == CONTROL]
    obs = np.stack([x[labels == p].mean(0) - ctrl.mean(0) for p in perts])
    pred = np.stack([model.predict(ctrl, p, "ctx0", 0).mean(0) - ctrl.mean(0) for p in perts])
    return obs, pred


def test_fits_its_training_perturbations_in_latent_space(fitted):
    """Cells predicted for each training perturbation, read by the teacher, shift the latent mean the way
    the real cells do (the old predictor reached r = 0.17 here)."""
    adata, train, _, model = fitted
    x = np.asarray(train.X.toarray() if hasattr(train.X, "toarray") else train.X, np.float32)
    labels = train.obs["target_gene"].to_numpy()
    ctrl = x[labels == CONTROL]
    encode = lambda cells: np.asarray(trainer._teacher_tokens(model.mods.encoder, cells, log_library(cells))).mean(0).ravel()
    z_ctrl = encode(ctrl)
    rs, ratios = [], []
    for p in sorted(set(labels) - {CONTROL}):
        true = encode(x[labels == p]) - z_ctrl
        pred = encode(model.predict(ctrl, p, "ctx0", 0)) - z_ctrl
        rs.append(np.corrcoef(true, pred)[0, 1])
        ratios.append(np.linalg.norm(pred) / np.linalg.norm(true))
    print(f"train latent r {np.median(rs):.3f}, norm ratio {np.median(ratios):.3f}")
    assert np.median(rs) >= 0.8 and 0.7 <= np.median(ratios) <= 1.3


def test_target_gene_goes_down_on_training_perturbations(fitted):
    adata, train, _, model = fitted
    perts = sorted(set(train.obs["target_gene"]) - {CONTROL})
    obs, pred = _deltas(adata, model, perts)
    genes = list(adata.var_names)
    idx = [genes.index(p) for p in perts]
    on_obs, on_pred = obs[np.arange(len(perts)), idx], pred[np.arange(len(perts)), idx]
    strong = on_obs < -0.2
    assert strong.sum() >= 5
    print(f"on-target: observed {on_obs[strong].mean():.3f}, predicted {on_pred[strong].mean():.3f}")
    assert (on_pred[strong] / on_obs[strong]).mean() >= 0.5


def test_held_out_perturbations_beat_the_cell_mean(fitted):
    adata, _, test, model = fitted
    obs, pred = _deltas(adata, model, test)
    r = np.mean([np.corrcoef(o, p)[0, 1] for o, p in zip(obs, pred)])
    assert r > 0.2, r


def test_the_control_action_leaves_cells_unchanged_and_an_action_moves_them(fitted):
    adata, _, test, model = fitted
    ctrl = np.asarray(adata.X[:20].toarray() if hasattr(adata.X, "toarray") else adata.X[:20])
    np.testing.assert_array_equal(model.predict(ctrl, CONTROL, "ctx0", 0), ctrl)
    assert np.abs(model.predict(ctrl, test[0], "ctx0", 0) - ctrl).max() > 1e-3


def test_predict_loss_is_stationary_at_the_target(fitted):
    """With the prior equal to the group's true shift and the targets the shift's own decoding, the mean
    terms are zero and have zero gradient with respect to the predictor."""
    _, train, _, model = fitted
    scr = trainer.prepare_screen(train, model.features)
    stats = trainer.group_stats(scr, model.mods.encoder)
    g = np.arange(4)
    rng = np.random.default_rng(0)
    cells = np.stack([rng.choice(stats.cells[i], 8) for i in g])
    ctrl = scr.controls.order[scr.controls.offset[cells]]
    latents = trainer.Latents(scr, model.mods.encoder, stats.z_cgd)
    tok = np.broadcast_to(np.arange(len(scr.genes)), (4, len(scr.genes)))
    batch = {"z_ctrl": latents.gather(ctrl, tok), "z_pert": latents.gather(cells, tok), "idx": tok.astype(np.int32),
             "prior": stats.delta_z[g], "feat": model.features.vectors(list(stats.labels[g])),
             "mode": np.zeros(4, np.int32), "ctx": np.ones(4, np.int32), "target": stats.target[g],
             "delta_z": stats.delta_z[g]}
    mods = model.mods
    zero = jax.tree.map(lambda x: x, mods.predictor)
    import equinox as eqx

    zero = eqx.tree_at(lambda p: p.mu_head.weight, zero, replace_fn=lambda w: w * 0.0)
    zero = eqx.tree_at(lambda p: p.mu_head.bias, zero, replace_fn=lambda w: w * 0.0)
    x_decoded = []  # the decoded shift of the true latent shift, per group
    for i in range(4):
        z = np.asarray(trainer._teacher_tokens(mods.encoder, scr.x_cg[ctrl[i]], scr.lib_c[ctrl[i]]))
        dec = lambda zz: np.asarray(jax.vmap(lambda t: mods.decoder(t, np.arange(z.shape[1]), np.ones(z.shape[1], bool))[0])(zz))
        x_decoded.append((dec(z + stats.delta_z[i]) - dec(z)).mean(0))
    batch["delta_x"] = np.stack(x_decoded).astype(np.float32)
    cfg = dataclasses.replace(TINY.predict, energy_weight=0.0, nll_weight=0.0, label_dropout=0.0)
    loss_fn = lambda p: stages.predict_loss((p, mods.composer), (mods.encoder, mods.decoder), batch,
                                             jax.random.PRNGKey(0), cfg=cfg)[0]
    loss, grads = eqx.filter_value_and_grad(loss_fn)(zero)
    assert float(loss) < 1e-8
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(eqx.filter(grads, eqx.is_array))) < 1e-5


def test_cached_teacher_latents_equal_a_fresh_teacher_pass(fitted):
    """The predict stage reads `group_stats`' cached latents; a screen too large for the cache gets them from
    the teacher again: both are the same latents, at whichever tokens a step draws."""
    _, train, _, model = fitted
    scr = trainer.prepare_screen(train, model.features)
    stats = trainer.group_stats(scr, model.mods.encoder)
    assert stats.z_cgd is not None and trainer.group_stats(scr, model.mods.encoder, cache_mib=0).z_cgd is None
    rng = np.random.default_rng(0)
    cells = rng.choice(len(scr.x_cg), (3, 5))
    tok = np.sort(np.stack([rng.choice(len(scr.genes), 7, replace=False) for _ in range(3)]), axis=1)
    cached = trainer.Latents(scr, model.mods.encoder, stats.z_cgd).gather(cells, tok)
    fresh = trainer.Latents(scr, model.mods.encoder, None).gather(cells, tok)
    assert cached.shape == (3, 5, 7, TINY.encoder.d)
    np.testing.assert_allclose(cached, fresh, rtol=1e-5, atol=1e-6)
    one = np.asarray(trainer._teacher_tokens(model.mods.encoder, scr.x_cg[cells[1, 2]][None], scr.lib_c[cells[1, 2]][None]))
    np.testing.assert_allclose(cached[1, 2], one[0, tok[1]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["tiny", "cpu-small", "paper"])
@pytest.mark.parametrize("steps_scale", [0.1, 1.0])
def test_ema_teacher_keeps_under_5_percent_of_its_init(preset, steps_scale):
    c = get_preset(preset).pretrain
    n = max(1, int(round(c.n_steps * steps_scale)))
    cap = ema.momentum_cap(n, c.ema_init_left)
    m = np.minimum(np.asarray([float(ema.ema_momentum(s, n, c.ema_start, c.ema_end)) for s in range(n)]), cap)
    assert np.prod(m) < 0.05


def test_ridge_loo_matches_refitting_without_each_row():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 3))
    coef, lam, loo = ridge_loo(x, y)
    scale = np.trace(x @ x.T) / 12
    for i in range(12):
        keep = np.arange(12) != i
        xi, yi = x[keep], y[keep]
        b = xi.T @ np.linalg.solve(xi @ xi.T + lam * scale * np.eye(11), yi)
        np.testing.assert_allclose(loo[i], x[i] @ b, rtol=1e-6, atol=1e-8)


def test_onehot_ids_give_no_shift_beyond_the_context_mean_for_unseen_perturbations():
    rng = np.random.default_rng(2)
    labels = np.asarray([f"P{i}" for i in range(10)])
    delta = rng.normal(size=(10, 6))
    onehot = GeneTable(name="onehot", keys=tuple(labels), matrix=np.eye(10), fallback="zeros")
    prior, _ = fit_prior(labels, np.zeros(10, int), np.asarray(["c"]), delta, onehot)
    np.testing.assert_allclose(prior.shift(["UNSEEN"], "c", onehot)[0], delta.mean(0), atol=1e-5)


def test_the_context_mean_shift_weights_each_perturbation_by_its_cells_as_the_cell_mean_baseline():
    """An unseen perturbation without informative features gets the shift of the mean perturbed cell (the
    cell-mean baseline), not the mean over perturbations: a perturbation with 3x the cells counts 3x."""
    labels = np.asarray(["A", "B", "C"])
    delta = np.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    onehot = GeneTable(name="onehot", keys=tuple(labels), matrix=np.eye(3), fallback="zeros")
    prior, _ = fit_prior(labels, np.zeros(3, int), np.asarray(["c"]), delta, onehot, n_cells=np.asarray([30, 10, 10]))
    np.testing.assert_allclose(prior.shift(["UNSEEN"], "c", onehot)[0], [0.6, 0.2], atol=1e-6)


def test_shuffled_labels_predict_nothing_for_held_out_perturbations():
    """Features that carry no information about the response (labels shuffled against the cells) give
    held-out predictions uncorrelated with the truth."""
    adata = _screen(seed=4)
    rng = np.random.default_rng(0)
    labels = adata.obs["target_gene"].to_numpy().copy()
    pert = labels != CONTROL
    labels[pert] = rng.permutation(labels[pert])
    shuffled = adata.copy()
    shuffled.obs["target_gene"] = labels
    perts = sorted(set(labels) - {CONTROL})
    test = perts[:8]
    from biojepac.models.jepa.prior import fit_prior as fit
    x = np.asarray(shuffled.X.toarray() if hasattr(shuffled.X, "toarray") else shuffled.X)
    ctrl = x[labels == CONTROL].mean(0)
    train_perts = perts[8:]
    deltas = np.stack([x[labels == p].mean(0) - ctrl for p in train_perts])
    feats = GeneTable(name="net", keys=tuple(adata.var_names), matrix=adata.varm["network_features"])
    prior, _ = fit(np.asarray(train_perts), np.zeros(len(train_perts), int), np.asarray(["ctx0"]), deltas, feats)
    truth = np.stack([x[labels == p].mean(0) - ctrl for p in test])
    pred = prior.shift(test, "ctx0", feats)
    base = deltas.mean(0)
    if not np.isfinite(prior.ridge_lambda):  # the leave-one-out check found no signal: B = 0, the mean shift
        np.testing.assert_allclose(pred, np.broadcast_to(base, pred.shape), atol=1e-5)
        return
    r = np.mean([np.corrcoef(t - base, p - base)[0, 1] for t, p in zip(truth, pred)])
    assert abs(r) < 0.3, r


def test_context_transfer_prior_moves_measured_shifts_scaled_by_shared_perturbations():
    """p measured in context a only: its prior in b is its shift in a times |Δ_b| / |Δ_a| over the
    perturbations both contexts measured (the context-transfer baseline's rule)."""
    rng = np.random.default_rng(3)
    shared = rng.normal(size=(4, 5))
    labels = np.asarray(["S0", "S1", "S2", "S3", "P"] + ["S0", "S1", "S2", "S3"])
    ctx = np.asarray([0] * 5 + [1] * 4)
    delta = np.vstack([shared, rng.normal(size=(1, 5)), 2.5 * shared])
    feats = GeneTable(name="f", keys=("S0", "S1", "S2", "S3", "P"), matrix=rng.normal(size=(5, 3)))
    prior, _ = fit_prior(labels, ctx, np.asarray(["a", "b"]), delta, feats)
    np.testing.assert_allclose(prior.shift(["P"], "b", feats)[0], 2.5 * delta[4], rtol=1e-5)
    np.testing.assert_allclose(prior.shift(["P"], "a", feats)[0], delta[4], rtol=1e-6)  # measured there


def test_transfer_is_kept_where_contexts_respond_alike_and_dropped_where_they_do_not():
    """With shifts shared between two contexts (plus noise) the prior transfers an unmeasured
    perturbation; with independent shifts per context it predicts the context's mean shift instead."""
    rng = np.random.default_rng(5)
    n, dim = 12, 40
    labels = np.asarray([f"S{i}" for i in range(n)] + [f"S{i}" for i in range(n - 1)])
    ctx = np.asarray([0] * n + [1] * (n - 1))
    feats = GeneTable(name="f", keys=tuple(f"S{i}" for i in range(n)), matrix=rng.normal(size=(n, 3)))
    common = rng.normal(size=(n, dim))
    alike = np.vstack([common, common[: n - 1]]) + 0.3 * rng.normal(size=(2 * n - 1, dim))
    prior, _ = fit_prior(labels, ctx, np.asarray(["a", "b"]), alike, feats)
    assert prior.alpha_seen == 1.0 and prior.alpha_unseen == 1.0
    np.testing.assert_allclose(prior.shift([f"S{n - 1}"], "b", feats)[0], prior.transfer(f"S{n - 1}", 1), rtol=1e-6)
    unlike = rng.normal(size=(2 * n - 1, dim))
    prior, _ = fit_prior(labels, ctx, np.asarray(["a", "b"]), unlike, feats)
    assert prior.alpha_seen == 0.0 and prior.alpha_unseen == 0.0
    np.testing.assert_allclose(prior.shift([f"S{n - 1}"], "b", feats)[0], prior.base[1], rtol=1e-6)
    np.testing.assert_allclose(prior.shift([f"S{n - 1}"], "new", feats)[0], prior.base.mean(0), rtol=1e-6)
    prior, _ = fit_prior(labels, ctx, np.asarray(["a", "b"]), unlike, feats, select_transfer=False)
    assert prior.alpha_seen == 1.0  # the ablation: always transfer


def test_loo_counts_the_mean_shift_so_features_without_signal_give_no_ridge():
    """Rows are shifts minus their mean, so they sum to zero and, with centred features of rank n - 1, a
    near-interpolating ridge 'predicts' each left-out row from the others unless the mean's leverage is
    counted. Counted, pure-noise features fall back to B = 0; informative ones keep the ridge, and its
    leave-one-out values equal explicit refits (mean and features re-centred without the row)."""
    rng = np.random.default_rng(7)
    n, labels = 12, np.asarray([f"P{i}" for i in range(12)])
    noise = GeneTable(name="noise", keys=tuple(labels), matrix=rng.normal(size=(n, 40)))
    delta = rng.normal(size=(n, 30))
    prior, _ = fit_prior(labels, np.zeros(n, int), np.asarray(["c"]), delta, noise)
    assert not np.isfinite(prior.ridge_lambda) and not prior.coef.any()
    f = rng.normal(size=(n, 3))
    signal = GeneTable(name="signal", keys=tuple(labels), matrix=f)
    delta = f @ rng.normal(size=(3, 30)) + 0.3 * rng.normal(size=(n, 30))
    prior, oos = fit_prior(labels, np.zeros(n, int), np.asarray(["c"]), delta, signal)
    assert np.isfinite(prior.ridge_lambda)
    lam = prior.ridge_lambda * np.trace((f - f.mean(0)) @ (f - f.mean(0)).T) / n
    for i in range(n):
        keep = np.arange(n) != i
        fc, yc = f[keep] - f[keep].mean(0), delta[keep] - delta[keep].mean(0)
        b = fc.T @ np.linalg.solve(fc @ fc.T + lam * np.eye(n - 1), yc)
        np.testing.assert_allclose(oos[i], delta[keep].mean(0) + (f[i] - f[keep].mean(0)) @ b, rtol=1e-4, atol=1e-4)


def test_ridge_lambda_by_correlation_is_the_grid_best_by_explicit_refits():
    """The correlation criterion picks the λ whose leave-one-out predictions (refitted without each row)
    have the highest mean Pearson r with the rows they predict."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(15, 4))
    y = x @ rng.normal(size=(4, 30)) + 2.0 * rng.normal(size=(15, 30))
    _, lam, _ = ridge_loo(x, y, criterion="correlation")
    scale = np.trace(x @ x.T) / 15

    def mean_r(rel):
        preds = []
        for i in range(15):
            keep = np.arange(15) != i
            preds.append(x[i] @ (x[keep].T @ np.linalg.solve(x[keep] @ x[keep].T + rel * scale * np.eye(14), y[keep])))
        return np.mean([np.corrcoef(p, t)[0, 1] for p, t in zip(preds, y)])

    from biojepac.models.jepa.prior import LAMBDA_GRID
    scores = {float(rel): mean_r(rel) for rel in LAMBDA_GRID}
    assert lam == pytest.approx(max(scores, key=scores.get), rel=1e-9)


def test_an_unmeasured_combination_gets_the_sum_of_its_singles_priors():
    """The additive model: A+B unmeasured, A and B measured -> Δ_A + Δ_B; a measured combination keeps its own."""
    rng = np.random.default_rng(7)
    labels = np.asarray(["A", "B", "C", "D", "C+D"])
    delta = rng.normal(size=(5, 6))
    feats = GeneTable(name="f", keys=("A", "B", "C", "D"), matrix=rng.normal(size=(4, 3)))
    prior, _ = fit_prior(labels, np.zeros(5, int), np.asarray(["c"]), delta, feats)
    np.testing.assert_allclose(prior.shift(["A+B"], "c", feats)[0], delta[0] + delta[1], rtol=1e-6)
    np.testing.assert_allclose(prior.shift(["C+D"], "c", feats)[0], delta[4], rtol=1e-6)


def test_a_ridge_prediction_is_kept_within_the_largest_training_effect():
    """Features far outside the training range cannot extrapolate a shift larger than any measured one."""
    rng = np.random.default_rng(8)
    labels = np.asarray([f"P{i}" for i in range(10)])
    phi = rng.normal(size=(11, 3))
    delta = phi[:10] @ rng.normal(size=(3, 6))
    phi[10] *= 1e4  # "FAR": a feature vector ten thousand times the training scale
    feats = GeneTable(name="f", keys=(*labels, "FAR"), matrix=phi)
    prior, _ = fit_prior(labels, np.zeros(10, int), np.asarray(["c"]), delta, feats)
    far = prior.shift(["FAR"], "c", feats)[0] - prior.base[0]
    assert np.linalg.norm(far) <= prior.max_norm * (1 + 1e-5)
    assert prior.max_norm == pytest.approx(np.linalg.norm(delta - delta.mean(0), axis=1).max(), rel=1e-5)


def test_a_perturbation_alone_in_its_context_does_not_void_the_ridge():
    """A few-shot context with one training perturbation: its mean shift is that perturbation's own, so it has
    no leave-one-out estimate. It must not enter the λ choice or the signal check (where it read as a huge
    error, 0/1e-6, and switched the ridge off for every context), and its out-of-sample shift is the mean's."""
    rng = np.random.default_rng(8)
    n, labels = 30, np.asarray([f"P{i}" for i in range(30)])
    f = rng.normal(size=(n, 3))
    feats = GeneTable(name="signal", keys=tuple(labels), matrix=f)
    delta = f @ rng.normal(size=(3, 20)) + 0.3 * rng.normal(size=(n, 20))
    ctx = np.zeros(n, int)
    alone, _ = fit_prior(labels, ctx, np.asarray(["a", "b"]), delta, feats)
    ctx[-1] = 1  # P29 is context b's only training perturbation
    prior, oos = fit_prior(labels, ctx, np.asarray(["a", "b"]), delta, feats)
    assert np.isfinite(prior.ridge_lambda) and prior.coef.any()
    assert np.all(np.isfinite(oos)) and np.abs(oos).max() < 10 * np.abs(delta).max()
    np.testing.assert_allclose(oos[-1], delta[-1], rtol=1e-5, atol=1e-6)
    assert np.isfinite(alone.ridge_lambda)
