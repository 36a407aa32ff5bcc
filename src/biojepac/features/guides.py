"""Guide DNA sequence features: normalised k-mer counts of each guide's spacer sequence.

Keys are guide ids. `by_target=True` averages a gene's guides into one vector keyed by the target gene,
for callers that only know the target. The input is a CSV with columns guide_id, target_gene, sequence.
"""

import itertools
import pathlib

import numpy as np
import pandas as pd

from biojepac.errors import InputError
from biojepac.features.base import GeneTable


def kmer_counts(seqs: list[str], k: int) -> np.ndarray:
    """(n, 4**k) frequencies of the k-mers over ACGT in each sequence (windows with other letters skipped)."""
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    index = {km: i for i, km in enumerate(kmers)}
    out = np.zeros((len(seqs), len(kmers)), np.float32)
    for i, s in enumerate(seqs):
        s = s.upper().replace("U", "T")
        for j in range(len(s) - k + 1):
            col = index.get(s[j : j + k])
            if col is not None:
                out[i, col] += 1
    return out / out.sum(1, keepdims=True).clip(1)


def make_guide_provider(guides_fpath: pathlib.Path, k: int = 3, by_target: bool = False) -> GeneTable:
    df = pd.read_csv(guides_fpath, dtype=str)
    need = {"guide_id", "target_gene", "sequence"}
    if not need <= set(df.columns):
        raise InputError(f"{guides_fpath}: needs columns {sorted(need)}, found {list(df.columns)}")
    bad = df.loc[~df["sequence"].fillna("").str.upper().str.fullmatch(r"[ACGTUN]+"), "guide_id"].tolist()
    if bad:
        raise InputError(f"{guides_fpath}: column 'sequence' is not DNA for guides {bad[:10]}")
    x = kmer_counts(df["sequence"].tolist(), k)
    if not by_target:
        return GeneTable(name=f"guide-{k}mer", keys=tuple(df["guide_id"]), matrix=x, source=str(guides_fpath),
                         harmonize=False)  # guide ids are not gene names
    targets, inv = np.unique(df["target_gene"].to_numpy(), return_inverse=True)
    sums = np.zeros((len(targets), x.shape[1]), np.float32)
    np.add.at(sums, inv, x)
    return GeneTable(name=f"guide-{k}mer-by-target", keys=tuple(targets.tolist()),
                     matrix=sums / np.bincount(inv)[:, None], source=str(guides_fpath))
