"""Losses: L1 to teacher latents, VICReg, InfoNCE and the Gaussian NLL, all with explicit formulas
(the tests compare each against a direct computation)."""

import beartype
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, jaxtyped


@jaxtyped(typechecker=beartype.beartype)
def weighted_l1(pred: Float[Array, "n d"], target: Float[Array, "n d"], w: Float[Array, " n"]) -> Float[Array, ""]:
    return jnp.sum(jnp.abs(pred - target).mean(-1) * w) / jnp.maximum(w.sum(), 1.0)


@jaxtyped(typechecker=beartype.beartype)
def vicreg(
    za: Float[Array, "n d"], zb: Float[Array, "n d"], w: Float[Array, " n"], eps: float = 1e-4
) -> dict[str, Float[Array, ""]]:
    """VICReg (Bardes et al. 2022) terms over rows weighted by `w` (0 for padding):
    invariance = mean squared difference; variance = mean_j relu(1 - sqrt(var_j + eps)), averaged over
    both branches; covariance = sum of squared off-diagonal covariances / d, summed over both branches."""
    n_eff = jnp.maximum(w.sum(), 2.0)
    inv = jnp.sum(((za - zb) ** 2).mean(-1) * w) / jnp.maximum(w.sum(), 1.0)

    def var_cov(z):
        zc = z - (w[:, None] * z).sum(0) / n_eff
        cov = (w[:, None] * zc).T @ zc / (n_eff - 1.0)
        var = jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(jnp.diag(cov) + eps)))
        off = cov - jnp.diag(jnp.diag(cov))
        return var, jnp.sum(off**2) / z.shape[1]

    (va, ca), (vb, cb) = var_cov(za), var_cov(zb)
    return {"inv": inv, "var": (va + vb) / 2.0, "cov": ca + cb}


@jaxtyped(typechecker=beartype.beartype)
def info_nce(a: Float[Array, "n d"], b: Float[Array, "n d"], tau: float) -> Float[Array, ""]:
    """Symmetric InfoNCE on cosine similarity: row i of `a` and `b` describe the same perturbation."""
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True).clip(1e-8)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True).clip(1e-8)
    logits = a @ b.T / tau
    diag = jnp.arange(a.shape[0])
    l_ab = -jax.nn.log_softmax(logits, axis=1)[diag, diag].mean()
    l_ba = -jax.nn.log_softmax(logits, axis=0)[diag, diag].mean()
    return (l_ab + l_ba) / 2.0


@jaxtyped(typechecker=beartype.beartype)
def gaussian_nll(
    mu: Float[Array, "n d"], logvar: Float[Array, "n d"], target: Float[Array, "n d"], w: Float[Array, " n"]
) -> Float[Array, ""]:
    """Mean over weighted rows and dims of 0.5·(log 2π + log σ² + (z − μ)² / σ²)."""
    nll = 0.5 * (jnp.log(2 * jnp.pi) + logvar + (target - mu) ** 2 * jnp.exp(-logvar))
    return jnp.sum(nll.mean(-1) * w) / jnp.maximum(w.sum(), 1.0)
