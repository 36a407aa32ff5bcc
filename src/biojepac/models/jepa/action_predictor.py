"""Stage-3 action-conditioned predictor: control-cell token latents + action latent -> a Gaussian over
the perturbed cell's teacher latents at every token.

Cross-attention (tokens query a few action tokens) injects the perturbation into each gene token; the
self-attention blocks that follow let the effect spread between genes. μ is a residual on the control
latent (the μ head starts at zero, so an untrained predictor says "no effect").
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from biojepac.models.jepa.attention import Block, CrossAttention
from biojepac.models.jepa.config import PredictConfig


class ActionPredictor(eqx.Module):
    in_proj: eqx.nn.Linear
    act_proj: eqx.nn.Linear
    ln_x: eqx.nn.LayerNorm
    cross: CrossAttention
    blocks: list[Block]
    ln_f: eqx.nn.LayerNorm
    mu_head: eqx.nn.Linear
    logvar_head: eqx.nn.Linear
    n_action_tokens: int = eqx.field(static=True)

    def __init__(self, d_latent: int, d_action: int, cfg: PredictConfig, key: PRNGKeyArray, kind: str = "linear"):
        k = jax.random.split(key, 6)
        p = cfg.d
        self.in_proj, self.act_proj = eqx.nn.Linear(d_latent, p, key=k[0]), eqx.nn.Linear(d_action, cfg.n_action_tokens * p, key=k[1])
        self.ln_x, self.cross = eqx.nn.LayerNorm(p), CrossAttention(p, cfg.n_heads, k[2])
        self.blocks = [Block(p, cfg.n_heads, 4, kk, kind) for kk in jax.random.split(k[3], cfg.n_layers)]
        self.ln_f = eqx.nn.LayerNorm(p)
        mu = eqx.nn.Linear(p, d_latent, key=k[4])
        self.mu_head = eqx.tree_at(lambda m: (m.weight, m.bias), mu, (jnp.zeros_like(mu.weight), jnp.zeros_like(mu.bias)))
        self.logvar_head = eqx.nn.Linear(p, d_latent, key=k[5])
        self.n_action_tokens = cfg.n_action_tokens

    def __call__(
        self, z_td: Float[Array, "t d"], mask_t: Bool[Array, " t"], a: Float[Array, " a"]
    ) -> tuple[Float[Array, "t d"], Float[Array, "t d"]]:
        x = jax.vmap(self.in_proj)(z_td)
        act = self.act_proj(a).reshape(self.n_action_tokens, -1)
        x = x + self.cross(jax.vmap(self.ln_x)(x), act)
        for block in self.blocks:
            x = block(x, mask_t)
        x = jax.vmap(self.ln_f)(x)
        return z_td + jax.vmap(self.mu_head)(x), jax.vmap(self.logvar_head)(x)
