"""The energy distance between two sets of cells: the distributional loss of the state-transition model.

For sets X (n cells) and Y (m cells),

    E(X, Y) = 2 mean_ij |x_i - y_j| - mean_ij |x_i - x_j| - mean_ij |y_i - y_j|

with |.| the Euclidean norm. It is the squared MMD under the energy-distance kernel k(a, b) = -|a - b|
(the kernel STATE uses through geomloss' `SamplesLoss("energy")`, which reports half this value).
It is zero iff the two distributions agree and, unlike a mean-squared error, it rewards matching the
spread of the perturbed cells, not only their mean. Means include the zero diagonal (a V-statistic).
"""

import beartype
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, jaxtyped

_EPS = 1e-12


@jaxtyped(typechecker=beartype.beartype)
def pairwise_distances(x_nd: Float[Array, "n d"], y_md: Float[Array, "m d"]) -> Float[Array, "n m"]:
    """Euclidean distances with a finite gradient at zero distance (the diagonal of a set with itself)."""
    d2_nm = (x_nd**2).sum(-1)[:, None] + (y_md**2).sum(-1)[None, :] - 2.0 * x_nd @ y_md.T
    d2_nm = jnp.maximum(d2_nm, 0.0)
    # sqrt'(0) is infinite; the double `where` keeps NaNs out of the backward pass.
    positive = d2_nm > _EPS
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2_nm, 1.0)), 0.0)


@jaxtyped(typechecker=beartype.beartype)
def energy_distance(x_nd: Float[Array, "n d"], y_md: Float[Array, "m d"]) -> Float[Array, ""]:
    """Squared MMD with the energy-distance kernel between the empirical distributions of x and y."""
    cross = pairwise_distances(x_nd, y_md).mean()
    within_x = pairwise_distances(x_nd, x_nd).mean()
    within_y = pairwise_distances(y_md, y_md).mean()
    return 2.0 * cross - within_x - within_y


batched_energy_distance = jax.vmap(energy_distance)
"""(b, n, d), (b, m, d) -> (b,): one distance per cell sentence."""
