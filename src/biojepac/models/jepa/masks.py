"""JEPA masks with a fixed count, so shapes stay static under XLA (TPU-friendly): exactly
`n_masked(n_tokens, ratio)` positions are masked in every cell, drawn uniformly without replacement.
When token sets are padded (`expressed` mode) a masked padding slot simply carries zero loss weight.
"""

import beartype
import jax
from jaxtyping import Array, Int, PRNGKeyArray, jaxtyped


def n_masked(n_tokens: int, ratio: float) -> int:
    n = int(round(n_tokens * ratio))
    assert 0 < n < n_tokens, f"mask ratio {ratio} of {n_tokens} tokens leaves no masked or no visible token"
    return n


@jaxtyped(typechecker=beartype.beartype)
def sample_mask(key: PRNGKeyArray, n_tokens: int, n_mask: int) -> tuple[Int[Array, " m"], Int[Array, " v"]]:
    """(masked positions, visible positions): a random split of range(n_tokens) with |masked| = n_mask."""
    perm = jax.random.permutation(key, n_tokens)
    return perm[:n_mask], perm[n_mask:]
