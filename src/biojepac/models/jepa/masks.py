"""JEPA masks with a fixed count, so shapes stay static under XLA (TPU-friendly): exactly
`n_masked(n_tokens, ratio)` positions are masked in every cell, drawn uniformly without replacement.
When token sets are padded (`expressed` mode) a masked padding slot simply carries zero loss weight.
A step may also read only a random subset of a cell's tokens (`n_keep`): a subset of a set is a set,
so the encoder and its teacher see a smaller cell, and masked + visible are a split of that subset.
"""

import beartype
import jax
from jaxtyping import Array, Int, PRNGKeyArray, jaxtyped


def n_masked(n_tokens: int, ratio: float) -> int:
    n = int(round(n_tokens * ratio))
    assert 0 < n < n_tokens, f"mask ratio {ratio} of {n_tokens} tokens leaves no masked or no visible token"
    return n


@jaxtyped(typechecker=beartype.beartype)
def sample_mask(
    key: PRNGKeyArray, n_tokens: int, n_mask: int, n_keep: int | None = None
) -> tuple[Int[Array, " m"], Int[Array, " v"]]:
    """(masked positions, visible positions): a random split, with |masked| = n_mask, of a uniformly drawn
    subset of `n_keep` positions of range(n_tokens) (None: all of them)."""
    n_keep = n_tokens if n_keep is None else n_keep
    assert n_mask < n_keep <= n_tokens, f"n_mask={n_mask}, n_keep={n_keep}, n_tokens={n_tokens}"
    perm = jax.random.permutation(key, n_tokens)
    return perm[:n_mask], perm[n_mask:n_keep]
