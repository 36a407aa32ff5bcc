"""One-hot perturbation features and integer indices for learned embedding tables.

One-hot vectors cannot generalise to a gene outside the vocabulary: an unseen perturbation is listed
as missing, which is the honest answer (see DOMAIN.md: "one-hot cannot generalise").
"""

from collections.abc import Sequence

import numpy as np

from biojepac.data.schema import CONTROL, split_combo
from biojepac.errors import InputError
from biojepac.features.base import GeneTable


def make_vocabulary(labels: Sequence[str], control: str = CONTROL) -> tuple[str, ...]:
    """Sorted single genes appearing in `labels` (combinations split, control dropped)."""
    return tuple(sorted({p for lab in labels for p in split_combo(lab) if p != control}))


def make_onehot_provider(vocab: Sequence[str], source: str = "training perturbations") -> GeneTable:
    vocab = tuple(vocab)
    return GeneTable(name=f"onehot{len(vocab)}", keys=vocab, matrix=np.eye(len(vocab), dtype=np.float32),
                     source=source)


def label_indices(labels: Sequence[str], vocab: Sequence[str], max_parts: int = 2,
                  control: str = CONTROL) -> np.ndarray:
    """(n, max_parts) int32 indices into `vocab` for a learned table; -1 pads singles and controls."""
    index = {g: i for i, g in enumerate(vocab)}
    out = np.full((len(labels), max_parts), -1, np.int32)
    missing = set()
    for i, lab in enumerate(labels):
        parts = [p for p in split_combo(lab) if p != control]
        if len(parts) > max_parts:
            raise InputError(f"perturbation {lab!r} has {len(parts)} parts; at most {max_parts} supported")
        for j, p in enumerate(parts):
            if p not in index:
                missing.add(p)
            else:
                out[i, j] = index[p]
    if missing:
        raise InputError(f"labels not in the learned-index vocabulary: {sorted(missing)}")
    return out
