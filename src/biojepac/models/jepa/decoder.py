"""A light decoder from latents to log-normalised expression over all genes.

Genes that are tokens are read from their own token latent by a per-gene linear map
(x_i = w_i·z_i + b_i); genes outside the token set (top-k / expressed modes) come from the pooled
latent. Because the token map is linear, a latent variance σ² gives a per-gene variance Σ_k w_ik² σ²_ik.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray


class Decoder(eqx.Module):
    w_gd: Float[Array, "g d"]
    b_g: Float[Array, " g"]
    pooled_head: eqx.nn.Linear

    def __init__(self, n_genes: int, d: int, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.w_gd = jax.random.normal(k1, (n_genes, d)) / jnp.sqrt(d)
        self.b_g = jnp.zeros(n_genes)
        self.pooled_head = eqx.nn.Linear(d, n_genes, key=k2)

    def shift(self, z_to: Float[Array, "t d"], z_from: Float[Array, "t d"], idx_t: Int[Array, " t"],
              mask_t: Bool[Array, " t"]) -> Float[Array, " g"]:
        """The expression shift between two latent states of the same cell (linear in their difference)."""
        return self(z_to, idx_t, mask_t)[0] - self(z_from, idx_t, mask_t)[0]

    def token_shift(self, z_to: Float[Array, "t d"], z_from: Float[Array, "t d"], idx_t: Int[Array, " t"]) -> Float[Array, " t"]:
        """The same shift at the token genes only (each read by its own row: w_t·(z_to − z_from))."""
        return jnp.einsum("td,td->t", self.w_gd[idx_t], z_to - z_from)

    def __call__(
        self, z_td: Float[Array, "t d"], idx_t: Int[Array, " t"], mask_t: Bool[Array, " t"], var_td: Float[Array, "t d"] | None = None
    ) -> tuple[Float[Array, " g"], Float[Array, " g"]]:
        """(expression mean, expression variance from σ²; zero where no variance is given)."""
        w = mask_t.astype(z_td.dtype)[:, None]
        pooled = (z_td * w).sum(0) / jnp.maximum(w.sum(), 1.0)
        x_g = self.pooled_head(pooled)
        tok = jnp.einsum("td,td->t", self.w_gd[idx_t], z_td) + self.b_g[idx_t]
        x_g = x_g.at[idx_t].set(jnp.where(mask_t, tok, x_g[idx_t]))
        var_g = jnp.zeros_like(x_g)
        if var_td is not None:
            var_g = var_g.at[idx_t].set(jnp.where(mask_t, jnp.einsum("td,td->t", self.w_gd[idx_t] ** 2, var_td), 0.0))
        return x_g, var_g
