"""arc-state's ST architecture (issue 15, part 2): the bidirectional Llama layer against a NumPy reference
written from the Llama definition, order-free attention over the set, arc-state's preset sizes, STATE's
energy scale, and the STATE head learning a known shift."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biojepac.models.energy import energy_distance
from biojepac.models.state import model as st
from biojepac.models.state import trainer
from biojepac.models.state.network import LlamaBlock, StateTransition
from random_screen import make_shift_screen


def _numpy_llama_layer(block: LlamaBlock, h: np.ndarray) -> np.ndarray:
    """HF LlamaDecoderLayer with no mask and no rotary: RMSNorm -> MHA -> residual -> RMSNorm -> SwiGLU -> residual."""
    w = {k: np.asarray(getattr(block, k), np.float64) for k in
         ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}

    def rms(x, weight):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + block.attn_norm.eps) * weight

    s, d = h.shape
    dh = d // block.n_heads
    x = rms(h, np.asarray(block.attn_norm.weight))
    q, k, v = x @ w["q_proj"].T, x @ w["k_proj"].T, x @ w["v_proj"].T
    out = np.zeros_like(h)
    for head in range(block.n_heads):
        sl = slice(head * dh, (head + 1) * dh)
        logits = q[:, sl] @ k[:, sl].T / np.sqrt(dh)
        p = np.exp(logits - logits.max(1, keepdims=True))
        out[:, sl] = (p / p.sum(1, keepdims=True)) @ v[:, sl]
    h = h + out @ w["o_proj"].T
    x = rms(h, np.asarray(block.mlp_norm.weight))
    gate = x @ w["gate_proj"].T
    return h + ((gate / (1 + np.exp(-gate))) * (x @ w["up_proj"].T)) @ w["down_proj"].T


def test_llama_block_matches_a_numpy_reference_and_is_order_free():
    block = LlamaBlock(24, 3, 4, 1e-6, key=jax.random.PRNGKey(0))
    # Larger weights than the N(0, 0.02) init, so attention is far from uniform and the check has teeth.
    block = jax.tree.map(lambda a: a * 20 if a.ndim == 2 else a + 0.5, block)
    h = np.random.default_rng(0).normal(size=(10, 24)).astype(np.float32)
    got = np.asarray(block(jnp.asarray(h)))
    np.testing.assert_allclose(got, _numpy_llama_layer(block, h.astype(np.float64)), rtol=2e-4, atol=2e-4)
    # No positional encoding: permuting the cells permutes the outputs.
    perm = np.random.default_rng(1).permutation(10)
    np.testing.assert_allclose(np.asarray(block(jnp.asarray(h[perm]))), got[perm], rtol=1e-5, atol=1e-5)
    # No causal mask: the first cell's output depends on the last cell.
    h2 = h.copy()
    h2[-1] += 1.0
    assert np.abs(np.asarray(block(jnp.asarray(h2)))[0] - got[0]).max() > 1e-3


@pytest.mark.parametrize("name,d,layers,heads,set_size", [("state_sm", 672, 4, 8, 128), ("state", 696, 8, 12, 512),
                                                          ("state_lg", 1488, 6, 12, 512)])
def test_presets_have_arc_states_sizes(name, d, layers, heads, set_size):
    cfg, fit_cfg = trainer.PRESETS[name]
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.set_size) == (d, layers, heads, set_size)
    assert (fit_cfg.batch_size, fit_cfg.lr, fit_cfg.grad_clip, fit_cfg.schedule) == (16, 1e-4, 10.0, "constant")
    net = eqx.filter_eval_shape(StateTransition, cfg, 2000, 2000, 5120, 3, 2, key=jax.random.PRNGKey(0))
    f = 4 * d  # arc-state's intermediate_size: 2688, 2784, 5952
    per_layer = 4 * d * d + 3 * d * f + 2 * d  # HF LlamaDecoderLayer: q,k,v,o + gate,up,down + two RMSNorms
    n_backbone = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(net.blocks) if isinstance(x, jax.ShapeDtypeStruct))
    assert n_backbone == layers * per_layer
    assert trainer.PRESETS["paper"] == trainer.PRESETS["state_sm"]


def test_state_energy_scale_is_geomloss_value():
    """geomloss' SamplesLoss("energy") is .5<a,Ka> + .5<b,Kb> - <a,Kb> with K = -|x - y| and uniform weights."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(0.5, 1.5, size=(6, 4))
    dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    geomloss = -0.5 * dist(x, x).mean() - 0.5 * dist(y, y).mean() + dist(x, y).mean()
    scale = trainer.PRESETS["state_sm"][0].energy_scale
    got = scale * float(energy_distance(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    assert got == pytest.approx(geomloss, rel=1e-4)


def test_state_head_learns_the_shifts(tmp_path):
    """The faithful network at a small width (Llama blocks, STATE head, 4-layer encoders) on a known shift."""
    adata = make_shift_screen()
    cfg = dataclasses.replace(trainer.PRESETS["state_sm"][0], set_size=16, d_model=32, n_layers=1, n_heads=2)
    fit_cfg = trainer.FitConfig(n_steps=400, batch_size=4, lr=3e-3, run_dpath=tmp_path / "run", progress=False)
    model = st.StateModel(cfg, "onehot", fit_cfg).fit(adata)
    ctrl = adata.X[adata.obs["target_gene"].to_numpy() == "non-targeting"]
    for pert in ("A", "B"):
        truth = adata.X[adata.obs["target_gene"].to_numpy() == pert].mean(0) - ctrl.mean(0)
        pred = model.predict(ctrl, pert, "c1", seed=0).mean(0) - ctrl.mean(0)
        assert np.abs(pred - truth).max() < 0.35 * np.abs(truth).max(), (pert, pred.round(2), truth.round(2))
    model.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "model.json").read_text())
    assert saved["config"]["backbone"] == "llama" and saved["config"]["head"] == "state"
    from biojepac.models import registry

    again = registry.load(tmp_path / "model")
    np.testing.assert_allclose(again.predict(ctrl, "A", "c1", 3), model.predict(ctrl, "A", "c1", 3), atol=1e-6)
