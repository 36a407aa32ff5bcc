"""State-transition model: the energy distance against direct computations, overfitting a tiny screen,
exact resume through the shared loop, and save/load through model.json."""

import dataclasses
import json

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from biojepac.features import resolve_features
from biojepac.models import registry
from biojepac.models.state import model as st
from biojepac.models.state import trainer
from biojepac.models.state.network import StateTransition
from biojepac.models.energy import energy_distance
from biojepac.train.loop import LoopConfig, make_state, make_train_step, run_loop
from random_screen import make_shift_screen


def _direct_energy(x, y):
    """The textbook V-statistic with explicit loops over every pair."""
    def mean_dist(a, b):
        return np.mean([[np.linalg.norm(ai - bj) for bj in b] for ai in a])

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def test_energy_distance_matches_direct_loops_and_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(1.0, 2.0, size=(9, 5))
    got = float(energy_distance(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    assert got == pytest.approx(_direct_energy(x, y), rel=1e-4)
    # In 1-D scipy returns sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|), the same quantity square-rooted.
    x1, y1 = x[:, :1], y[:, :1]
    got1 = float(energy_distance(jnp.asarray(x1, jnp.float32), jnp.asarray(y1, jnp.float32)))
    assert got1 == pytest.approx(scipy.stats.energy_distance(x1[:, 0], y1[:, 0]) ** 2, rel=1e-4)
    # A set against itself is at distance 0, and the gradient there is finite (no sqrt(0) NaN).
    grad = jax.grad(lambda a: energy_distance(a, jnp.asarray(x, jnp.float32)))(jnp.asarray(x, jnp.float32))
    assert float(energy_distance(jnp.asarray(x), jnp.asarray(x))) == pytest.approx(0.0, abs=1e-5)
    assert np.isfinite(np.asarray(grad)).all()


TINY = dataclasses.replace(trainer.PRESETS["tiny"][0], set_size=16, prior="none")  # the network alone must learn


def test_tiny_model_learns_the_shifts_and_round_trips(tmp_path):
    adata = make_shift_screen()
    fit_cfg = trainer.FitConfig(n_steps=150, batch_size=4, lr=3e-3, run_dpath=tmp_path / "run", progress=False)
    model = st.StateModel(TINY, "onehot", fit_cfg).fit(adata)
    ctrl = adata.X[adata.obs["target_gene"].to_numpy() == "non-targeting"]
    for pert in ("A", "B"):
        truth = adata.X[adata.obs["target_gene"].to_numpy() == pert].mean(0) - ctrl.mean(0)
        pred = model.predict(ctrl, pert, "c1", seed=0).mean(0) - ctrl.mean(0)
        # The untrained model is the identity (error = |truth|); training must remove most of it.
        assert np.abs(pred - truth).max() < 0.35 * np.abs(truth).max(), (pert, pred.round(2), truth.round(2))
    losses = [json.loads(line)["energy"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]

    model.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model.json").read_text())["kind"] == "state"
    again = registry.load(tmp_path / "model")
    np.testing.assert_allclose(again.predict(ctrl, "A", "c1", 3), model.predict(ctrl, "A", "c1", 3), atol=1e-6)
    # An unseen context falls back to the "unknown" row instead of failing; a gene without features fails.
    assert again.predict(ctrl, "A", "never-seen", 0).shape == ctrl.shape
    with pytest.raises(Exception, match="ZZZ"):
        again.predict(ctrl, "ZZZ", "c1", 0)


def test_resume_gives_the_same_parameters(tmp_path):
    adata = make_shift_screen(n_genes=6)
    features = resolve_features("onehot", adata)
    x = np.asarray(adata.X)
    sampler = trainer.SentenceSampler(x, x, adata.obs, features.vectors(["A", "B"]), 8, 2, seed=1)
    cfg = dataclasses.replace(TINY, set_size=8)
    fit_cfg = trainer.FitConfig(n_steps=6, lr=1e-3)
    optim = trainer.make_optimizer(fit_cfg)
    step_fn = make_train_step(trainer.make_loss_fn(cfg), optim)

    def fresh():
        net = StateTransition(cfg, 6, 6, features.dim, 1, 1, key=jax.random.PRNGKey(0))
        return make_state(net, optim, jax.random.PRNGKey(1))

    loop_cfg = LoopConfig(n_steps=6, ckpt_every=2, log_every=1, progress=False)
    straight = run_loop(fresh(), step_fn, sampler, loop_cfg, tmp_path / "a")
    run_loop(fresh(), step_fn, sampler, loop_cfg, tmp_path / "b", stop_after=3)  # "killed" after step 3
    resumed = run_loop(fresh(), step_fn, sampler, loop_cfg, tmp_path / "b")  # restarts from the step-2 checkpoint
    for a, b in zip(jax.tree.leaves(eqx.filter(straight.params, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(resumed.params, eqx.is_array))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_bf16_training_keeps_float32_weights_and_tracks_the_float32_loss(tmp_path):
    """`FitConfig.bf16`: the loss is computed in bfloat16 from float32 master weights; its value stays within
    bf16's precision of float32's and the updated weights stay float32."""
    from biojepac.train.distributed import mixed_precision

    adata = make_shift_screen(n_genes=6)
    features = resolve_features("onehot", adata)
    x = np.asarray(adata.X)
    sampler = trainer.SentenceSampler(x, x, adata.obs, features.vectors(["A", "B"]), 8, 2, seed=1)
    cfg = dataclasses.replace(TINY, set_size=8)
    net = StateTransition(cfg, 6, 6, features.dim, 1, 1, key=jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in sampler(0).items()}
    loss32, _ = trainer.make_loss_fn(cfg)(net, None, batch, jax.random.PRNGKey(2))
    loss16, _ = mixed_precision(trainer.make_loss_fn(cfg))(net, None, batch, jax.random.PRNGKey(2))
    assert loss16.dtype == jnp.float32 and abs(float(loss16) - float(loss32)) <= 0.02 * abs(float(loss32)) + 1e-3
    fitted, *_ = trainer.fit(adata, cfg, "onehot", trainer.FitConfig(n_steps=2, batch_size=2, lr=1e-3, bf16=True,
                                                                     run_dpath=tmp_path / "run", progress=False))
    leaves = jax.tree.leaves(eqx.filter(fitted, eqx.is_inexact_array))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves) and all(np.isfinite(np.asarray(leaf)).all() for leaf in leaves)


def test_sampler_pairs_controls_of_the_same_context():
    adata = make_shift_screen(n_genes=6)
    adata.obs["context"] = np.where(np.arange(adata.n_obs) % 2 == 0, "c1", "c2")
    x = np.arange(adata.n_obs, dtype=np.float32)[:, None].repeat(6, 1)  # a cell's value is its row
    sampler = trainer.SentenceSampler(x, x, adata.obs, np.eye(2, dtype=np.float32), 8, 6, seed=0)
    batch = sampler(5)
    ctx_of_row = adata.obs["context"].to_numpy()
    for b in range(6):
        ctrl_rows = batch["ctrl"][b, :, 0].astype(int)
        target_rows = batch["target"][b, :, 0].astype(int)
        assert (adata.obs["target_gene"].to_numpy()[ctrl_rows] == "non-targeting").all()
        assert set(ctx_of_row[ctrl_rows]) == set(ctx_of_row[target_rows]) == {sampler.contexts[batch["context"][b] - 1]}
    np.testing.assert_array_equal(sampler(5)["ctrl"], batch["ctrl"])  # a pure function of the step


def test_latent_input_runs_on_the_biojepac_encoder_and_round_trips(tmp_path):
    """A (random, untrained) BioJEPAC encoder supplies the cell tokens; the saved model carries it along."""
    from biojepac.models.jepa.config import get_preset
    from biojepac.features.base import GeneTable
    from biojepac.models.jepa.model import BioJepacModel
    from biojepac.models.jepa.network import make_modules
    from biojepac.models.jepa.prior import fit_prior
    from biojepac.models.state.latent import JepaCellEncoder

    adata = make_shift_screen(n_genes=8)
    jepa = BioJepacModel(get_preset("tiny"))
    jepa.genes, jepa.mode = list(map(str, adata.var_names)), 0
    jepa.features = GeneTable(name="ab", keys=("A", "B"), matrix=np.stack([np.ones(4), -np.ones(4)]))
    jepa.prior, _ = fit_prior(np.asarray(["A", "B"]), np.zeros(2, int), np.asarray(["c1"]), np.ones((2, 8 * 16)), jepa.features)
    jepa.contexts = ["c1"]
    jepa.mods = make_modules(8, 4, jepa.cfg, jax.random.PRNGKey(0))
    jepa.save(tmp_path / "jepa")
    encoder = JepaCellEncoder(tmp_path / "jepa")
    x = np.asarray(adata.X[:5])
    assert encoder.encode(x).shape == (5, encoder.dim)
    np.testing.assert_allclose(encoder.encode(x[::-1])[::-1], encoder.encode(x), atol=1e-5)  # per cell, no mixing

    cfg = dataclasses.replace(TINY, cell_input="latent", set_size=8)
    fit_cfg = trainer.FitConfig(n_steps=4, batch_size=2, run_dpath=tmp_path / "run", progress=False)
    model = st.StateModel(cfg, "onehot", fit_cfg, encoder=encoder).fit(adata)
    rows = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "energy_latent" in rows and np.isfinite(rows["loss"])
    model.save(tmp_path / "model")
    again = registry.load(tmp_path / "model")  # the copied encoder comes back with it
    pred = again.predict(x, "A", "c1", 0)
    assert pred.shape == x.shape and (pred >= 0).all()
    np.testing.assert_allclose(pred, model.predict(x, "A", "c1", 0), atol=1e-5)


def test_rerun_into_a_run_folder_with_another_seed_or_data_is_refused(tmp_path):
    from biojepac.errors import InputError

    adata = make_shift_screen(n_genes=6)
    cfg = dataclasses.replace(TINY, set_size=8)
    fit = lambda data, seed: trainer.fit(data, cfg, "onehot", trainer.FitConfig(
        n_steps=2, batch_size=2, seed=seed, run_dpath=tmp_path / "run", progress=False))
    fit(adata, 0)
    fit(adata, 0)  # same settings and data: resumes (here: already finished)
    with pytest.raises(InputError, match=r"run: its checkpoint was made with other settings \(fit.seed: 0 there, 1 now"):
        fit(adata, 1)
    other = adata.copy()
    other.X = np.asarray(other.X) * 2
    with pytest.raises(InputError, match=r"data.x_sum: "):
        fit(other, 0)


def test_prior_transfers_a_shift_to_a_context_where_it_was_not_measured(tmp_path):
    """Preset prior: "B" measured only in c1 is predicted in c2 from its c1 shift (context transfer); the
    held-out check records whether the residual is kept, and the choice survives save / load."""
    one, two = make_shift_screen(seed=1), make_shift_screen(seed=2)
    two.obs["context"] = "c2"
    two.obs_names = [f"c2-{i}" for i in range(two.n_obs)]
    two = two[two.obs["target_gene"].to_numpy() != "B"].copy()
    adata = ad.concat([one, two])
    adata.obs["context"] = adata.obs["context"].astype(str)
    cfg = dataclasses.replace(trainer.PRESETS["tiny"][0], set_size=8)
    assert cfg.prior == "ridge" and cfg.backbone == "llama"
    model = st.StateModel(cfg, "onehot", trainer.FitConfig(n_steps=20, batch_size=2, run_dpath=tmp_path / "run",
                                                          progress=False)).fit(adata)
    ctrl = np.asarray(two.X[two.obs["target_gene"].to_numpy() == "non-targeting"])
    shift = model.predict(ctrl, "B", "c2", 0).mean(0) - ctrl.mean(0)
    assert shift[3:6].max() < -0.6 and np.abs(shift[:3]).max() < 0.3, shift.round(2)
    model.save(tmp_path / "model")
    again = registry.load(tmp_path / "model")
    assert again.meta.use_residual == model.meta.use_residual
    np.testing.assert_allclose(again.predict(ctrl, "B", "c2", 0), model.predict(ctrl, "B", "c2", 0), atol=1e-5)
