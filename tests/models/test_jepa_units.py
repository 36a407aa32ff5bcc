"""BioJEPAC building blocks against direct computations: attention, losses, masks, FiLM, equivariance."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from biojepac.models.jepa import losses
from biojepac.models.jepa.attention import Block, CrossAttention, linear_attention, phi
from biojepac.models.jepa.composer import Composer
from biojepac.models.jepa.config import ComposeConfig, EncoderConfig
from biojepac.models.jepa.encoder import Encoder, select_tokens
from biojepac.models.jepa.masks import n_masked, sample_mask


def test_linear_attention_matches_quadratic_reference():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(7, 2, 3)), jnp.float32) for _ in range(3))
    mask = jnp.asarray([1, 1, 0, 1, 1, 0, 1], bool)
    out = linear_attention(q, k, v, mask)
    fq, fk = np.asarray(phi(q)), np.asarray(phi(k))
    ref = np.zeros((7, 2, 3))
    for h in range(2):
        a = fq[:, h] @ fk[:, h].T * np.asarray(mask)[None, :]  # (L, L) similarities, padded keys dropped
        ref[:, h] = a @ np.asarray(v[:, h]) / a.sum(1, keepdims=True)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_block_rows_give_exactly_those_rows_of_the_full_output():
    """The pretrain loss asks the teacher's and the predictor's last block for the rows it reads only."""
    x = jax.random.normal(jax.random.PRNGKey(1), (9, 8))
    mask = jnp.arange(9) < 7
    for kind in ("linear", "softmax"):
        block = Block(8, 2, 4, jax.random.PRNGKey(0), kind)
        full = block(x, mask)
        np.testing.assert_allclose(block(x, mask, jnp.asarray([5, 0, 8])), full[jnp.asarray([5, 0, 8])], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(block(x, mask, slice(4, None)), full[4:], rtol=1e-5, atol=1e-6)


def test_cross_attention_matches_per_head_softmax():
    cross = CrossAttention(8, 2, jax.random.PRNGKey(0))
    x, c = jax.random.normal(jax.random.PRNGKey(1), (5, 8)), jax.random.normal(jax.random.PRNGKey(2), (3, 8))
    q = np.asarray(x @ cross.q.weight.T + cross.q.bias)
    kv = np.asarray(c @ cross.kv.weight.T + cross.kv.bias)
    k, v = kv[:, :8], kv[:, 8:]
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        a = np.exp(q[:, sl] @ k[:, sl].T / 2.0)
        heads.append(a / a.sum(1, keepdims=True) @ v[:, sl])
    ref = np.concatenate(heads, 1) @ np.asarray(cross.out.weight).T + np.asarray(cross.out.bias)
    np.testing.assert_allclose(cross(x, c), ref, rtol=1e-4, atol=1e-5)


def test_vicreg_matches_hand_computation():
    za = jnp.asarray([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    zb = jnp.asarray([[0.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    out = losses.vicreg(za, zb, jnp.ones(3), eps=0.0)
    # inv: squared diffs (1,0),(0,4),(1,4) -> mean over rows of row means = (0.5 + 2 + 2.5)/3
    np.testing.assert_allclose(out["inv"], 5.0 / 3.0, rtol=1e-6)
    # za columns: var([1,0,1]) = 1/3, var([0,2,1]) = 1; zb: 0 and 3. relu(1 - std) averaged per branch, then /2.
    va = (1 - np.sqrt(1 / 3) + 0.0) / 2
    vb = (1.0 + 0.0) / 2
    np.testing.assert_allclose(out["var"], (va + vb) / 2, rtol=1e-5)
    # cov(za)_01 = sum((1/3,-2/3,1/3)*(-1,1,0))/2 = -0.5 ; zb: column 0 is constant -> 0. Off-diag squared*2/d.
    np.testing.assert_allclose(out["cov"], 2 * 0.25 / 2 + 0.0, rtol=1e-5)
    # Zero weight on a row is the same as dropping it.
    w_out = losses.vicreg(jnp.vstack([za, za[:1] * 9]), jnp.vstack([zb, zb[:1]]), jnp.asarray([1.0, 1, 1, 0]), eps=0.0)
    for key in out:
        np.testing.assert_allclose(w_out[key], out[key], rtol=1e-5)


def test_mask_count_exact_and_disjoint():
    n_tok = 37
    n_m = n_masked(n_tok, 0.6)
    assert n_m == 22
    for seed in range(3):
        m, v = sample_mask(jax.random.PRNGKey(seed), n_tok, n_m)
        assert m.shape == (22,) and v.shape == (15,)
        assert sorted(np.concatenate([m, v]).tolist()) == list(range(n_tok))
        m, v = sample_mask(jax.random.PRNGKey(seed), n_tok, n_masked(20, 0.6), 20)  # a subset of 20 tokens
        kept = np.concatenate([m, v])
        assert m.shape == (12,) and v.shape == (8,) and len(set(kept.tolist())) == 20 and kept.max() < n_tok


def _pretrain_setup(n_genes: int, token_subset: int):
    from biojepac.models.jepa.config import get_preset
    from biojepac.models.jepa.jepa_predictor import MaskPredictor

    mcfg = get_preset("tiny")
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    student = Encoder(n_genes, mcfg.encoder, k1)
    predictor = MaskPredictor(mcfg.encoder.d, mcfg.pretrain.pred_d, mcfg.pretrain.pred_layers, mcfg.encoder.n_heads, k2)
    return (student, predictor), student, dataclasses.replace(mcfg.pretrain, token_subset=token_subset)


def test_pretrain_token_subset_reads_only_the_drawn_tokens():
    """With `token_subset`, a cell's loss depends on the values of its drawn tokens only (student and teacher
    alike), and a step costs about that fraction of the full cell's FLOPs."""
    from biojepac.models.jepa import stages

    n_genes, n_cells, k = 40, 3, 10
    params, teacher, cfg = _pretrain_setup(n_genes, k)
    x = np.random.default_rng(0).random((n_cells, n_genes), dtype=np.float32)
    lib, key = jnp.full((n_cells,), 3.0), jax.random.PRNGKey(1)
    loss = jax.jit(lambda xx: stages.pretrain_loss(params, teacher, {"x": xx, "lib": lib}, key, cfg=cfg)[0])
    drawn = np.zeros((n_cells, n_genes), bool)
    for i, kk in enumerate(jax.random.split(key, n_cells)):  # the draw pretrain_loss makes for cell i
        m, v = sample_mask(kk, n_genes, n_masked(k, cfg.mask_ratio), k)
        drawn[i, np.concatenate([m, v])] = True
    np.testing.assert_allclose(float(loss(x)), float(loss(np.where(drawn, x, 5.0))), rtol=1e-6)
    assert abs(float(loss(x)) - float(loss(np.where(drawn, 5.0, x)))) > 1e-4
    flops = lambda c: jax.jit(lambda xx: stages.pretrain_loss(params, teacher, {"x": xx, "lib": lib}, key, cfg=c)[0]).lower(
        x).compile().cost_analysis()
    first = lambda ca: (ca[0] if isinstance(ca, list) else ca)["flops"]
    assert first(flops(cfg)) < 0.4 * first(flops(dataclasses.replace(cfg, token_subset=0)))


def test_info_nce_matches_direct_loop():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    tau = 0.07
    got = float(losses.info_nce(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), tau))
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    total = 0.0
    for i in range(5):
        sims_row = [an[i] @ bn[j] / tau for j in range(5)]
        sims_col = [an[j] @ bn[i] / tau for j in range(5)]
        total += -sims_row[i] + np.log(np.sum(np.exp(sims_row)))
        total += -sims_col[i] + np.log(np.sum(np.exp(sims_col)))
    np.testing.assert_allclose(got, total / 10, rtol=1e-4)


def test_gaussian_nll_matches_formula():
    mu, logvar, z = jnp.asarray([[0.5, -1.0]]), jnp.asarray([[0.0, np.log(4.0)]]), jnp.asarray([[1.5, 1.0]])
    expected = np.mean([0.5 * (np.log(2 * np.pi) + 0 + 1.0), 0.5 * (np.log(2 * np.pi) + np.log(4.0) + 4.0 / 4.0)])
    np.testing.assert_allclose(losses.gaussian_nll(mu, logvar, z, jnp.ones(1)), expected, rtol=1e-6)
    l1 = losses.weighted_l1(jnp.asarray([[1.0, 2.0], [5.0, 5.0]]), jnp.zeros((2, 2)), jnp.asarray([1.0, 0.0]))
    np.testing.assert_allclose(l1, 1.5)


def test_film_with_zero_mode_weights_is_identity():
    comp = Composer({"gene": 6}, ComposeConfig(d_content=8, d_mode=4, hidden=5), jax.random.PRNGKey(0))
    f, mode = jnp.arange(6.0), jnp.asarray(2)
    c = comp.content("gene", f)
    np.testing.assert_allclose(comp("gene", f, mode), c, rtol=1e-6)  # initialised as identity
    # Non-zero FiLM weights change it; zeroing them again restores the identity exactly.
    moved = eqx.tree_at(lambda m: m.film_t.bias, comp, jnp.ones(8))
    assert float(jnp.abs(moved("gene", f, mode) - c).max()) > 0.5
    zeroed = eqx.tree_at(lambda m: (m.film_s.weight, m.film_s.bias, m.film_t.weight, m.film_t.bias), moved,
                         (jnp.zeros((8, 4)), jnp.zeros(8), jnp.zeros((8, 4)), jnp.zeros(8)))
    np.testing.assert_array_equal(zeroed("gene", f, mode), c)


def test_encoder_is_permutation_equivariant_and_pooled_invariant():
    enc = Encoder(12, EncoderConfig(d=8, n_layers=2, n_heads=2, gene_id_bias=True), jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(0).gamma(1.0, 1.0, 12), jnp.float32)
    idx, val, mask = select_tokens(x, "all", 0)
    lib = jnp.asarray(0.8)
    z = enc.tokens(idx, val, mask, lib)
    perm = np.random.default_rng(1).permutation(12)
    z_perm = enc.tokens(idx[perm], val[perm], mask[perm], lib)
    np.testing.assert_allclose(z_perm, z[perm], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z_perm.mean(0), z.mean(0), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(z[0] - z[1]).max()) > 1e-3  # tokens differ, so the check is not vacuous


def test_token_selection_modes():
    x = jnp.asarray([0.0, 3.0, 0.0, 1.0, 2.0])
    idx, val, mask = select_tokens(x, "topk", 2)
    assert idx.tolist() == [1, 4] and mask.all()
    idx, val, mask = select_tokens(x, "expressed", 4)
    assert idx[:3].tolist() == [1, 4, 3] and mask.tolist() == [True, True, True, False]


def test_predictor_ablation_switches_remove_exactly_their_inputs():
    """`interaction=False`: the targeted flag and the gene's own embedding no longer reach the residual;
    `context_token=False`: the context label no longer does. With both on, each of them moves it."""
    from biojepac.models.jepa.action_predictor import ActionPredictor
    from biojepac.models.jepa.config import PredictConfig

    rng = np.random.default_rng(0)
    z, gene = (jnp.asarray(rng.normal(size=(5, 6)), jnp.float32) for _ in range(2))
    a, mask = jnp.asarray(rng.normal(size=4), jnp.float32), jnp.ones(5, bool)
    flag, none = jnp.asarray([1.0, 0, 0, 0, 0]), jnp.zeros(5)

    def residual(cfg, ctx, target, gene_td=gene):
        net = ActionPredictor(6, 4, cfg, jax.random.PRNGKey(1), n_contexts=2)
        w = jax.random.normal(jax.random.PRNGKey(2), net.mu_head.weight.shape)
        net = eqx.tree_at(lambda m: m.mu_head.weight, net, w)  # not the zero init
        return np.asarray(net(z, mask, gene_td, a, jnp.asarray(ctx), target)[0])

    base = PredictConfig(d=8, n_layers=1, n_heads=2, n_action_tokens=2)
    moved = lambda cfg, **kw: np.abs(residual(cfg, **{"ctx": 1, "target": none, **kw}) - residual(cfg, 1, none)).max()
    assert moved(base, ctx=2) > 1e-3 and moved(base, target=flag) > 1e-3 and moved(base, gene_td=gene * 2) > 1e-3
    no_inter = dataclasses.replace(base, interaction=False)
    assert moved(no_inter, target=flag) == 0.0 and moved(no_inter, gene_td=gene * 2) == 0.0 and moved(no_inter, ctx=2) > 1e-3
    no_ctx = dataclasses.replace(base, context_token=False)
    assert moved(no_ctx, ctx=2) == 0.0 and moved(no_ctx, target=flag) > 1e-3
