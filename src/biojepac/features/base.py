"""The feature-provider interface and the one concrete table every provider builds.

A provider maps perturbation labels (`"KLF1"`, combinations `"KLF1+MAP2K6"`, the control label) to
fixed-size vectors. Every provider here is a `GeneTable`: a list of keys (gene symbols, guide ids or
modality names) and a matrix with one row per key.

Rules every caller can rely on:
- A combination `A+B` is the SUM of its parts' vectors (`combine="sum"`, the default: additive in
  feature space, like additive effects) or their MEAN (`combine="mean"`: keeps the scale of a single).
- The control label and the empty label map to the zero vector: "no perturbation" by definition,
  not a missing gene.
- Gene names are harmonised before matching (`harmonize=True`, the default for gene-keyed tables):
  a label and a key match when they are the same current human symbol after `data.genes` maps
  outdated symbols, aliases and Ensembl IDs (MARCH8 -> MARCHF8, QARS -> QARS1). An exact key always
  wins; an ambiguous alias (TAZ: WWTR1 or TAFAZZIN) is never guessed, only reported.
- A key that the table lacks raises `InputError` naming the spec, the provider, its source and every
  missing key (ambiguous ones with their candidates). Silent zeros would make an unseen gene look like
  a no-effect perturbation. Callers may opt into `fallback="zeros"` or `fallback="mean"` (the mean row
  of the table); the choice is recorded in `describe()` so provenance shows it.
"""

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from biojepac.data.schema import CONTROL, split_combo
from biojepac.errors import InputError


@runtime_checkable
class FeatureProvider(Protocol):
    name: str
    """Short identifier recorded in provenance, e.g. `go-tfidf-svd64`."""
    dim: int
    """Length of every vector."""

    def vectors(self, labels: Sequence[str]) -> np.ndarray:
        """One row per label (float32, len(labels) x dim); combinations combined; missing keys raise."""
        ...

    def missing(self, labels: Sequence[str]) -> list[str]:
        """Sorted unique single keys (combination parts included) that this provider lacks."""
        ...


@dataclasses.dataclass(frozen=True)
class GeneTable:
    """A key -> vector table with combination handling and loud missing keys."""

    name: str
    """Identifier recorded in provenance."""
    keys: tuple[str, ...]
    """Row keys (gene symbols, guide ids, modality names), unique."""
    matrix: np.ndarray
    """float32, len(keys) x dim."""
    source: str = ""
    """Where the table came from (file path, training data), for error messages and provenance."""
    combine: Literal["sum", "mean"] = "sum"
    """How the parts of `A+B` are combined."""
    fallback: Literal["error", "zeros", "mean"] = "error"
    """What a missing key becomes. Anything but "error" must be an explicit caller choice."""
    control: str = CONTROL
    """The label that maps to the zero vector."""
    spec: str = ""
    """The feature spec that built the table (`go`, `expr|go`, ...), named in errors and provenance."""
    harmonize: bool = True
    """Match labels and keys through current human gene symbols (`data.genes`) when no key is exact."""

    def __post_init__(self):
        assert self.matrix.ndim == 2 and self.matrix.shape[0] == len(self.keys), (self.matrix.shape, len(self.keys))
        if len(set(self.keys)) != len(self.keys):
            dup = sorted({k for k in self.keys if self.keys.count(k) > 1})[:10]
            raise InputError(f"feature table {self.source or self.name}: duplicate keys {dup}")
        object.__setattr__(self, "matrix", np.ascontiguousarray(self.matrix, dtype=np.float32))
        object.__setattr__(self, "_index", {k: i for i, k in enumerate(self.keys)})

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def _parts(self, label: str) -> list[str]:
        return [p for p in split_combo(label) if p != self.control]

    def _canonical_index(self) -> dict[str, int]:
        """Current symbol -> row for keys written as an outdated symbol, alias or Ensembl ID (built once).

        A key that is already current is found through `_index`; an alias key whose current symbol is
        also a key loses to it; two alias keys claiming one symbol are both left out (never merged)."""
        cached = self.__dict__.get("_canon")
        if cached is None:
            from biojepac.data.genes import load_symbols

            symbols, claims = load_symbols(), {}
            for i, key in enumerate(self.keys):
                sym = symbols.canonical(key)
                if sym is not None and sym != key and sym not in self._index:
                    claims.setdefault(sym, []).append(i)
            cached = {sym: rows[0] for sym, rows in claims.items() if len(rows) == 1}
            object.__setattr__(self, "_canon", cached)
        return cached

    def symbol_keys(self) -> tuple[str, ...]:
        """The keys with each outdated symbol / alias / Ensembl ID replaced by its current symbol (where
        that is unambiguous and no other key already holds it), to merge tables from different sources."""
        keys = list(self.keys)
        if self.harmonize:
            for sym, row in self._canonical_index().items():
                keys[row] = sym
        return tuple(keys)

    def match(self, part: str) -> tuple[int | None, str]:
        """(row, how) for one gene: how is `exact`, `harmonised` (matched through current symbols),
        `ambiguous: A/B` (an alias of several genes; not guessed) or `missing`."""
        row = self._index.get(part)
        if row is not None:
            return row, "exact"
        if not self.harmonize:
            return None, "missing"
        from biojepac.data.genes import load_symbols

        symbols = load_symbols()
        sym = symbols.canonical(part)
        if sym is None:
            return None, "ambiguous: " + "/".join(symbols.resolve(part)[1])
        row = self._index.get(sym)
        if row is None:
            row = self._canonical_index().get(sym)
        return (row, "harmonised") if row is not None else (None, "missing")

    def missing(self, labels: Sequence[str]) -> list[str]:
        parts = {p for lab in labels for p in self._parts(lab)}
        return sorted(p for p in parts if self.match(p)[0] is None)

    def explain_missing(self, labels: Sequence[str]) -> str:
        """The missing genes of `labels`, ambiguous ones with their candidates, for an error message."""
        miss = self.missing(labels)
        shown = []
        for p in miss[:20]:
            how = self.match(p)[1]
            shown.append(f"{p} ({how.replace(': ', ' alias of ')})" if how.startswith("ambiguous") else p)
        return ", ".join(shown) + (f" ... ({len(miss)} in all)" if len(miss) > 20 else "")

    def vectors(self, labels: Sequence[str]) -> np.ndarray:
        labels = list(labels)
        miss = self.missing(labels)
        if miss and self.fallback == "error":
            spec = f"feature spec {self.spec!r}: " if self.spec else ""
            raise InputError(f"{spec}feature provider {self.name!r} ({self.source or 'in memory'}) has no vector "
                             f"for: {self.explain_missing(labels)}")
        # Row n_keys is the fallback row, so one gather + scatter-add handles every label at once.
        extra = self.matrix.mean(0) if self.fallback == "mean" else np.zeros(self.dim, np.float32)
        table = np.vstack([self.matrix, extra[None, :]])
        rows, cols = [], []
        for i, lab in enumerate(labels):
            for p in self._parts(lab):
                row = self.match(p)[0]
                rows.append(i)
                cols.append(len(self.keys) if row is None else row)
        out = np.zeros((len(labels), self.dim), np.float32)
        np.add.at(out, np.asarray(rows, int), table[np.asarray(cols, int)])
        if self.combine == "mean":
            n_parts = np.bincount(np.asarray(rows, int), minlength=len(labels)).clip(1)
            out /= n_parts[:, None]
        return out

    def with_options(self, **kwargs) -> "GeneTable":
        """A copy with other `combine` / `fallback` / `name`; the matrix is shared, not copied."""
        return dataclasses.replace(self, **kwargs)

    def describe(self) -> dict:
        """Provenance: what this provider is and how it treats combinations and missing keys."""
        return {"name": self.name, "spec": self.spec, "dim": self.dim, "n_keys": len(self.keys), "source": self.source,
                "combine": self.combine, "fallback": self.fallback, "harmonize": self.harmonize}

    def save(self, fpath: pathlib.Path) -> None:
        """`.npz` with keys, matrix and options (the caller writes atomically around it)."""
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("keys", "matrix")}
        with open(fpath, "wb") as fd:
            np.savez(fd, keys=np.asarray(self.keys, dtype=str), matrix=self.matrix, meta=json.dumps(meta))

    @classmethod
    def load(cls, fpath: pathlib.Path) -> "GeneTable":
        with np.load(fpath, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            return cls(keys=tuple(npz["keys"].tolist()), matrix=npz["matrix"], **meta)


def restrict(table: GeneTable, keys: Sequence[str]) -> GeneTable:
    """The rows that `keys` match (harmonised), under the table's own keys (to store a small table inside
    a saved model; later lookups harmonise again)."""
    rows = list(dict.fromkeys(r for k in keys if (r := table.match(k)[0]) is not None))
    idx = np.asarray(rows, int)
    return dataclasses.replace(table, keys=tuple(table.keys[i] for i in rows),
                               matrix=table.matrix[idx].reshape(len(rows), table.dim))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero)."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

