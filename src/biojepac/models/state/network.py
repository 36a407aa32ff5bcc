"""The state-transition (ST) network of STATE (Adduri et al. 2025), in JAX.

A perturbation maps a *set* of control cells to a *set* of perturbed cells:

    basal   = basal_encoder(cell)                                   # one token per cell
    tokens  = basal + pert_encoder(perturbation) + context_token + batch_token
    hidden  = norm(backbone(tokens))    # bidirectional attention across the S cells, no positional encoding
    pred    = relu(project_out(hidden + basal))   # head="state": STATE's residual in hidden space
            | cell + zero_init_linear(hidden)     # head="cell-residual": the control plus a learned residual
    loss    = energy_scale * energy_distance(pred, observed perturbed set) [+ w * |mean(pred) - mean(obs)|^2]

The backbone is arc-state's `LlamaBidirectionalModel` (`backbone="llama"`: RMSNorm, SwiGLU, no bias, no causal
mask, rotary embeddings replaced by the identity) or the GPT-2-style block this model started with
(`"gpt2"`: LayerNorm, GELU MLP; kept for the `tiny` / `cpu-small` presets, whose bench rows were measured
with it). docs/state.md maps every STATE component onto this file and lists each deviation.

Cells enter as HVG expression (`cell_input="expression"`) or as latents of a frozen cell encoder
(`"latent"`, the role of STATE's SE embedding); latents are decoded back to expression by an MLP.
Row 0 of the context and batch tables means "unknown": training drops labels to it now and then, so a
held-out cell line or an unlabelled control set still gets a sensible conditioning token.
"""

import dataclasses
import functools
from typing import Literal

import beartype
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, jaxtyped


@dataclasses.dataclass(frozen=True)
class StateConfig:
    cell_input: Literal["expression", "latent"] = "expression"
    """What a cell token is built from: HVG expression, or the BioJEPAC encoder's pooled cell latent."""
    set_size: int = 32
    """S, the number of cells per sentence (STATE's `cell_set_len`: 128 for state_sm, 512 for state/state_lg)."""
    d_model: int = 128
    """Width of the transformer (STATE's `hidden_dim`)."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads per block (head width d_model / n_heads)."""
    mlp_ratio: int = 4
    """Hidden width of each block's MLP, as a multiple of d_model (STATE's intermediate_size is 4x)."""
    decoder_hidden: int = 256
    """Hidden width of the latent -> expression decoder (latent input only)."""
    pseudobulk_weight: float = 0.0
    """Weight of the MSE between predicted and observed set means, added to the energy distance."""
    label_dropout: float = 0.1
    """Probability of replacing a context or batch label by "unknown" during training."""
    backbone: Literal["gpt2", "llama"] = "gpt2"
    """Transformer block: arc-state's bidirectional Llama (RMSNorm, SwiGLU) or GPT-2 style (LayerNorm, GELU)."""
    head: Literal["cell-residual", "state"] = "cell-residual"
    """Output: the control plus a zero-initialised residual, or STATE's project_out(hidden + basal) with ReLU."""
    n_basal_layers: int = 2
    """Linear layers of the basal-cell encoder (STATE: 1 when use_basal_projection is off, else n_encoder_layers)."""
    n_pert_layers: int = 2
    """Linear layers of the perturbation encoder (STATE's n_encoder_layers, 4)."""
    n_decoder_layers: int = 4
    """Linear layers of STATE's project_out (head="state" only; STATE's n_decoder_layers)."""
    energy_scale: float = 1.0
    """Multiplies the textbook energy distance; 0.5 is the value geomloss' SamplesLoss("energy") reports."""
    batch_token: bool = True
    """Add a learned batch embedding to every token (STATE's batch_encoder)."""
    context_token: bool = True
    """Add a learned context (cell line) embedding to every token (not in STATE; see docs/state.md)."""
    rms_eps: float = 1e-6
    """RMSNorm epsilon of the Llama backbone (STATE's layer_norm_eps)."""
    prior: Literal["none", "ridge"] = "none"
    """Move each sentence's control cells by a closed-form prior shift before the network sees them: the
    perturbation's measured shift in another context (context transfer) or a ridge fit on its features
    (`models/jepa/prior.py`). The network then learns the correction to a baseline (not in STATE; docs/state.md)."""


class SetBlock(eqx.Module):
    """GPT-2-style pre-norm transformer block over the cells of one sentence (backbone="gpt2")."""

    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, d: int, n_heads: int, mlp_ratio: int, *, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.attn = eqx.nn.MultiheadAttention(n_heads, d, key=k1)
        self.mlp = eqx.nn.MLP(d, d, d * mlp_ratio, depth=1, activation=jax.nn.gelu, key=k2)

    def __call__(self, h_sd: Float[Array, "s d"]) -> Float[Array, "s d"]:
        x_sd = jax.vmap(self.ln1)(h_sd)
        h_sd = h_sd + self.attn(x_sd, x_sd, x_sd)
        return h_sd + jax.vmap(self.mlp)(jax.vmap(self.ln2)(h_sd))


class RMSNorm(eqx.Module):
    """Llama's RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""

    weight: Float[Array, " d"]
    eps: float = eqx.field(static=True)

    def __init__(self, d: int, eps: float):
        self.weight, self.eps = jnp.ones(d), eps

    def __call__(self, x_sd: Float[Array, "s d"]) -> Float[Array, "s d"]:
        return x_sd * jax.lax.rsqrt((x_sd**2).mean(-1, keepdims=True) + self.eps) * self.weight


def _llama_linear(n_in: int, n_out: int, key: jax.Array) -> Float[Array, "o i"]:
    """A bias-free projection, (out, in) like torch, initialised N(0, 0.02) as HF Llama does."""
    return 0.02 * jax.random.normal(key, (n_out, n_in))


class LlamaBlock(eqx.Module):
    """One arc-state Llama decoder layer with the causal mask and rotary embeddings removed."""

    attn_norm: RMSNorm
    q_proj: Float[Array, "d d"]
    k_proj: Float[Array, "d d"]
    v_proj: Float[Array, "d d"]
    o_proj: Float[Array, "d d"]
    mlp_norm: RMSNorm
    gate_proj: Float[Array, "f d"]
    up_proj: Float[Array, "f d"]
    down_proj: Float[Array, "d f"]
    n_heads: int = eqx.field(static=True)

    def __init__(self, d: int, n_heads: int, mlp_ratio: int, eps: float, *, key: jax.Array):
        assert d % n_heads == 0, f"d_model {d} is not a multiple of n_heads {n_heads}"
        ks = jax.random.split(key, 7)
        f = d * mlp_ratio
        self.attn_norm, self.mlp_norm = RMSNorm(d, eps), RMSNorm(d, eps)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (_llama_linear(d, d, k) for k in ks[:4])
        self.gate_proj, self.up_proj = _llama_linear(d, f, ks[4]), _llama_linear(d, f, ks[5])
        self.down_proj = _llama_linear(f, d, ks[6])
        self.n_heads = n_heads

    def __call__(self, h_sd: Float[Array, "s d"]) -> Float[Array, "s d"]:
        s, d = h_sd.shape
        x_sd = self.attn_norm(h_sd)
        q_shk, k_shk, v_shk = ((x_sd @ w.T).reshape(s, self.n_heads, d // self.n_heads)
                               for w in (self.q_proj, self.k_proj, self.v_proj))
        # No mask and no rotary: every cell attends to every cell, and the set is order-free.
        a_sd = jax.nn.dot_product_attention(q_shk, k_shk, v_shk).reshape(s, d)
        h_sd = h_sd + a_sd @ self.o_proj.T
        x_sd = self.mlp_norm(h_sd)
        return h_sd + (jax.nn.silu(x_sd @ self.gate_proj.T) * (x_sd @ self.up_proj.T)) @ self.down_proj.T


_exact_gelu = functools.partial(jax.nn.gelu, approximate=False)  # torch.nn.GELU's default


class StateTransition(eqx.Module):
    """The network. `n_in` is the cell-token width (genes, or latent dim); `n_genes` the output genes.

    Field names predate the Llama backbone (cell_in is STATE's basal_encoder, pert_in its pert_encoder,
    head its project_out), so models saved before it still load."""

    cell_in: eqx.nn.MLP
    pert_in: eqx.nn.MLP
    context_emb: eqx.nn.Embedding
    batch_emb: eqx.nn.Embedding
    blocks: list
    ln_f: eqx.Module
    head: eqx.Module
    decoder: eqx.nn.MLP | None
    cfg: StateConfig = eqx.field(static=True)

    def __init__(self, cfg: StateConfig, n_in: int, n_genes: int, pert_dim: int, n_contexts: int,
                 n_batches: int, *, key: jax.Array):
        keys = jax.random.split(key, 6 + cfg.n_layers)
        d = cfg.d_model
        act = jax.nn.gelu if cfg.head == "cell-residual" else _exact_gelu
        self.cfg = cfg
        self.cell_in = eqx.nn.MLP(n_in, d, d, depth=cfg.n_basal_layers - 1, activation=act, key=keys[0])
        self.pert_in = eqx.nn.MLP(pert_dim, d, d, depth=cfg.n_pert_layers - 1, activation=act, key=keys[1])
        self.context_emb = eqx.nn.Embedding(n_contexts + 1, d, key=keys[2])  # +1: row 0 is "unknown"
        self.batch_emb = eqx.nn.Embedding(n_batches + 1, d, key=keys[3])
        if cfg.backbone == "gpt2":
            self.blocks = [SetBlock(d, cfg.n_heads, cfg.mlp_ratio, key=k) for k in keys[6:]]
            self.ln_f = eqx.nn.LayerNorm(d)
        else:
            self.blocks = [LlamaBlock(d, cfg.n_heads, cfg.mlp_ratio, cfg.rms_eps, key=k) for k in keys[6:]]
            self.ln_f = RMSNorm(d, cfg.rms_eps)  # LlamaModel's final norm
        if cfg.head == "cell-residual":
            # A zero-initialised head makes the untrained model the identity map (predict the controls),
            # a sane starting point: most perturbations barely move most genes.
            head = eqx.nn.Linear(d, n_in, key=keys[4])
            self.head = eqx.tree_at(lambda m: (m.weight, m.bias), head, (jnp.zeros_like(head.weight), jnp.zeros(n_in)))
        else:
            self.head = eqx.nn.MLP(d, n_in, d, depth=cfg.n_decoder_layers - 1, activation=act, key=keys[4])
        is_latent = cfg.cell_input == "latent"
        self.decoder = eqx.nn.MLP(n_in, n_genes, cfg.decoder_hidden, depth=2, activation=jax.nn.gelu,
                                  key=keys[5]) if is_latent else None

    @jaxtyped(typechecker=beartype.beartype)
    def __call__(self, x_sn: Float[Array, "s n"], pert_p: Float[Array, " p"], context: Int[Array, ""],
                 batch_s: Int[Array, " s"], prior_n: Float[Array, " n"] | None = None
                 ) -> tuple[Float[Array, "s n"], Float[Array, "s g"]]:
        """One sentence -> (predicted cell tokens, predicted expression). `batch_s`: each cell's batch row
        (STATE adds its batch embedding per token; 0 is "unknown"). `prior_n`: the prior shift that moves the
        control cells first (`cfg.prior`; None: no shift)."""
        cfg = self.cfg
        if prior_n is not None:
            x_sn = x_sn + prior_n[None, :]
        cond_d = self.pert_in(pert_p)
        if cfg.context_token:
            cond_d = cond_d + self.context_emb(context)
        basal_sd = jax.vmap(self.cell_in)(x_sn)
        h_sd = basal_sd + cond_d[None, :]
        if cfg.batch_token:
            h_sd = h_sd + jax.vmap(self.batch_emb)(batch_s)
        for block in self.blocks:
            h_sd = block(h_sd)
        if cfg.backbone == "gpt2":
            h_sd = jax.vmap(self.ln_f)(h_sd)
        else:
            h_sd = self.ln_f(h_sd)
        if cfg.head == "cell-residual":
            pred_sn = x_sn + jax.vmap(self.head)(h_sd)
        else:
            pred_sn = jax.vmap(self.head)(h_sd + basal_sd)
            if self.decoder is None:  # STATE's ReLU on outputs in gene space
                pred_sn = jax.nn.relu(pred_sn)
        expr_sg = pred_sn if self.decoder is None else jax.vmap(self.decoder)(pred_sn)
        return pred_sn, expr_sg


@dataclasses.dataclass(frozen=True)
class StateMeta:
    """Everything besides the weights needed to rebuild and use a fitted model (stored in model.json)."""

    config: StateConfig
    genes: tuple[str, ...]
    contexts: tuple[str, ...]
    batches: tuple[str, ...]
    n_in: int
    pert_dim: int
    features: dict
    encoder_dpath: str = ""
    """Saved BioJEPAC encoder used for latent input (empty for expression input)."""
    use_residual: bool = True
    """With a prior: whether the network's residual beat the prior alone on held-out perturbations
    (`trainer.residual_helps`); False predicts controls + prior shift."""



def predict_set_cells(net: StateTransition, x_ng: np.ndarray, pert_p: np.ndarray, context: int, set_size: int,
                      seed: int, batch_n: np.ndarray | None = None,
                      windows: Literal["shuffle", "as-given"] = "shuffle", prior_g: np.ndarray | None = None) -> np.ndarray:
    """Predict every control cell's perturbed state, S cells at a time, in the caller's order.

    `batch_n`: each cell's batch row (0, "unknown", when None). `windows="shuffle"`: the cells are shuffled
    (seeded) into sentences and the last one is topped up with resampled cells whose predictions are dropped,
    so every sentence has exactly S cells (one compiled shape). `"as-given"`: consecutive runs of S cells in the
    given order, the last one shorter, as `state tx infer` forms its sentences.
    """
    n = x_ng.shape[0]
    batch_n = np.zeros(n, np.int32) if batch_n is None else np.asarray(batch_n, np.int32)
    prior = None if prior_g is None else jnp.asarray(prior_g, jnp.float32)
    if windows == "as-given":
        out = np.concatenate([
            np.asarray(_forward(net, jnp.asarray(x_ng[None, i : i + set_size]), jnp.asarray(pert_p), jnp.asarray(context),
                                jnp.asarray(batch_n[None, i : i + set_size]), prior))[0]
            for i in range(0, n, set_size)])
        return np.clip(out, 0.0, None).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_pad = -n % set_size
    order = np.concatenate([order, rng.choice(n, size=n_pad, replace=True)])
    x_bsn = x_ng[order].reshape(-1, set_size, x_ng.shape[1])
    b_bs = batch_n[order].reshape(-1, set_size)
    expr_bsg = np.asarray(_forward(net, jnp.asarray(x_bsn), jnp.asarray(pert_p), jnp.asarray(context), jnp.asarray(b_bs),
                                   prior))
    expr_ng = expr_bsg.reshape(-1, expr_bsg.shape[-1])[:n]
    out = np.empty_like(expr_ng)
    out[order[:n]] = expr_ng
    return np.clip(out, 0.0, None).astype(np.float32)  # log1p expression cannot be negative


@eqx.filter_jit
def _forward(net: StateTransition, x_bsn, pert_p, context, batch_bs, prior_g):
    return jax.vmap(lambda x, b: net(x, pert_p, context, b, prior_g)[1])(x_bsn, batch_bs)
