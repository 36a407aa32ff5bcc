"""Feature specs combined from several sources: `A+B` (concatenate) and `A|B` (first source that has it).

Both match genes across sources on current human symbols (`GeneTable.symbol_keys`), so `MARCH8` in one
source and `MARCHF8` in another are one gene; a row keeps the name the first source that has it uses
(lookups harmonise anyway, and non-human names such as a synthetic screen's `G1` stay as written).

- `A+B` (`concat`): one row per gene any source has. Each source's block is scaled so its rows have
  unit root-mean-square norm (sources on different scales weigh the same); a source without the gene
  contributes zeros, and one indicator column per source says whether it had the gene (so "no
  knowledge" is never confused with "a vector near the origin"). dim = sum of dims + number of sources.
- `A|B` (`fallback`): A's coordinates. A gene A has keeps A's vector; a gene only B has gets B's vector
  mapped into A's coordinates by a ridge regression (with intercept) fitted on the genes both have, its
  penalty chosen by exact leave-one-gene-out error. So `expr|go` is the training screen's gene embedding
  where the gene is measured, and a GO-based estimate of it where not (Ahlmann-Eltze et al. 2025 use a
  second knowledge source the same way). With fewer than `MIN_SHARED` shared genes B cannot be mapped;
  it is then left out, and the table's `source` says so.
"""

import numpy as np

from biojepac.features.base import GeneTable

MIN_SHARED = 10
"""Fewest genes two sources must share before one can be mapped into the other's coordinates."""

RIDGE_GRID = tuple(10.0 ** np.arange(-3, 3.5, 0.5))
"""Penalties tried for the `|` map, relative to the mean squared norm of the source's rows."""


def rms_scale(matrix: np.ndarray) -> float:
    """1 / root-mean-square row norm (1 for an all-zero matrix)."""
    rms = float(np.sqrt((np.asarray(matrix, np.float64) ** 2).sum(1).mean())) if len(matrix) else 0.0
    return 1.0 / rms if rms > 0 else 1.0


def _names(tables: list[GeneTable]) -> dict[str, str]:
    """Current symbol -> the key the first source having it writes (the symbol itself if that name is taken)."""
    names, used = {}, set()
    for table in tables:
        for key, sym in zip(table.keys, table.symbol_keys()):
            if sym not in names:
                names[sym] = key if key not in used else sym
                used.add(names[sym])
    return names


def concat(tables: list[GeneTable], spec: str) -> GeneTable:
    """`A+B+...`: per-source RMS-normalised blocks, zeros where a source lacks the gene, one indicator each."""
    names = _names(tables)
    syms = sorted(names, key=lambda k: names[k])
    index = {k: i for i, k in enumerate(syms)}
    blocks = []
    for table in tables:
        rows = np.asarray([index[k] for k in table.symbol_keys()], int)
        block = np.zeros((len(syms), table.dim + 1), np.float32)
        block[rows, :-1] = table.matrix * rms_scale(table.matrix)
        block[rows, -1] = 1.0
        blocks.append(block)
    source = "; ".join(f"{t.name}: {len(t.keys)} genes ({t.source})" for t in tables)
    return GeneTable(name="+".join(t.name for t in tables), keys=tuple(names[k] for k in syms),
                     matrix=np.hstack(blocks), source=source, spec=spec)


def fallback(tables: list[GeneTable], spec: str) -> GeneTable:
    """`A|B|...`: A's vectors, then each later source's genes not yet covered, mapped into A's coordinates."""
    first, names = tables[0], _names(tables)
    keys = list(first.symbol_keys())
    matrix = [np.asarray(first.matrix, np.float64)]
    notes = [f"{first.name}: {len(keys)} genes ({first.source})"]
    for table in tables[1:]:
        have = {k: i for i, k in enumerate(keys)}
        sym = table.symbol_keys()
        shared = [(have[k], i) for i, k in enumerate(sym) if k in have]
        new = [i for i, k in enumerate(sym) if k not in have]
        if len(shared) < MIN_SHARED:
            notes.append(f"{table.name}: left out, only {len(shared)} genes shared with {first.name} "
                         f"(need {MIN_SHARED} to map it)")
            continue
        current = np.vstack(matrix)
        dst, src = map(np.asarray, zip(*shared))
        w, b, lam = fit_map(np.asarray(table.matrix[src], np.float64), current[dst])
        matrix.append(np.asarray(table.matrix[new], np.float64) @ w + b)
        keys += [sym[i] for i in new]
        notes.append(f"{table.name}: {len(new)} more genes, mapped by ridge (penalty {lam:.3g}) over "
                     f"{len(shared)} shared genes ({table.source})")
    return GeneTable(name="|".join(t.name for t in tables), keys=tuple(names[k] for k in keys),
                     matrix=np.vstack(matrix), source="; ".join(notes), spec=spec)


def loo_errors(x: np.ndarray, y: np.ndarray, grid=RIDGE_GRID) -> np.ndarray:
    """Leave-one-out squared error (summed over y's columns) of ridge with intercept, y ≈ x W + b, for each
    penalty in `grid` (relative to the mean squared row norm of centred x); exact, from one SVD."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    scale = float((xc * xc).sum(1).mean()) or 1.0
    errors = []
    for rel in grid:
        shrink = s**2 / (s**2 + rel * scale)
        fitted = u @ (shrink[:, None] * uty)
        hat = 1.0 / len(x) + (u**2) @ shrink  # the intercept's 1/n plus the ridge part
        errors.append(float((((yc - fitted) / np.clip(1.0 - hat, 1e-6, None)[:, None]) ** 2).sum()))
    return np.asarray(errors)


def fit_map(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge map y ≈ x W + b, its penalty the `RIDGE_GRID` value with the least leave-one-out error.
    Returns (W, b, relative penalty)."""
    rel = RIDGE_GRID[int(np.argmin(loo_errors(x, y)))]
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    lam = rel * (float((xc * xc).sum(1).mean()) or 1.0)
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, my - mx @ w, rel
