"""Stage-3 action-conditioned predictor: a learned residual on the linear prior's latent shift.

Input per cell: the control cell's teacher token latents moved by the prior shift (z + Δprior), the
action latent a (the composer's reading of the perturbation features), the context and which tokens
are the perturbed genes themselves. Each token gets

    x_t = W z_t + (U e_t) ⊙ (V a) + [t is targeted]·τ + ctx      (e_t: the gene's embedding)

so the action acts on each gene differently (the bilinear gene × action term) and on its own target
directly (τ), then cross-attends to a few action tokens and mixes with the other genes through
self-attention. The outputs are a residual μ-shift (zero at init: the model starts as the prior) and a
log-variance per token latent.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from biojepac.models.jepa.attention import Block, CrossAttention, dense, norm
from biojepac.models.jepa.config import PredictConfig


def _zero(lin: eqx.nn.Linear) -> eqx.nn.Linear:
    return eqx.tree_at(lambda m: (m.weight, m.bias), lin, (jnp.zeros_like(lin.weight), jnp.zeros_like(lin.bias)))


class ActionPredictor(eqx.Module):
    in_proj: eqx.nn.Linear
    gene_proj: eqx.nn.Linear
    act_gene: eqx.nn.Linear
    act_tokens: eqx.nn.Linear
    target_emb: Float[Array, " p"]
    ctx_emb: eqx.nn.Embedding
    ln_x: eqx.nn.LayerNorm
    cross: CrossAttention
    blocks: list[Block]
    ln_f: eqx.nn.LayerNorm
    mu_head: eqx.nn.Linear
    logvar_head: eqx.nn.Linear
    n_action_tokens: int = eqx.field(static=True)
    interaction: bool = eqx.field(static=True)
    context_token: bool = eqx.field(static=True)

    def __init__(self, d_latent: int, d_action: int, cfg: PredictConfig, key: PRNGKeyArray, kind: str = "linear",
                 n_contexts: int = 1):
        k = jax.random.split(key, 10)
        p = cfg.d
        self.in_proj, self.gene_proj = eqx.nn.Linear(d_latent, p, key=k[0]), eqx.nn.Linear(d_latent, p, key=k[1])
        self.act_gene = eqx.nn.Linear(d_action, p, key=k[2])
        self.act_tokens = eqx.nn.Linear(d_action, cfg.n_action_tokens * p, key=k[3])
        self.target_emb = jax.random.normal(k[4], (p,)) * 0.1
        self.ctx_emb = eqx.nn.Embedding(n_contexts + 1, p, key=k[5])  # row 0: unknown context
        self.ln_x, self.cross = eqx.nn.LayerNorm(p), CrossAttention(p, cfg.n_heads, k[6])
        self.blocks = [Block(p, cfg.n_heads, 4, kk, kind) for kk in jax.random.split(k[7], cfg.n_layers)]
        self.ln_f = eqx.nn.LayerNorm(p)
        self.mu_head = _zero(eqx.nn.Linear(p, d_latent, key=k[8]))
        self.logvar_head = eqx.nn.Linear(p, d_latent, key=k[9])
        self.n_action_tokens = cfg.n_action_tokens
        self.interaction, self.context_token = cfg.interaction, cfg.context_token

    def __call__(
        self, z_td: Float[Array, "t d"], mask_t: Bool[Array, " t"], gene_td: Float[Array, "t d"],
        a: Float[Array, " a"], ctx: Int[Array, ""], target_t: Float[Array, " t"],
    ) -> tuple[Float[Array, "t d"], Float[Array, "t d"]]:
        """(residual shift of each token latent, its log-variance)."""
        x = dense(self.in_proj, z_td)
        if self.interaction:  # added term by term, in the order of the formula above (bit-identical with it)
            x = x + dense(self.gene_proj, gene_td) * self.act_gene(a)[None, :]
            x = x + target_t[:, None] * self.target_emb[None, :]
        if self.context_token:
            x = x + self.ctx_emb(ctx)[None, :]
        act = self.act_tokens(a).reshape(self.n_action_tokens, -1)
        x = x + self.cross(norm(self.ln_x, x), act)
        for block in self.blocks:
            x = block(x, mask_t)
        x = norm(self.ln_f, x)
        return dense(self.mu_head, x), dense(self.logvar_head, x)
