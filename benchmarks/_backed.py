"""Shared by the scale benchmarks: write a large synthetic backed screen chunk by chunk, and run a
measured step in a fresh subprocess (peak RSS of that process alone, optionally under `prlimit --as`)."""

import json
import os
import pathlib
import subprocess
import sys
import time

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.data.ooc import CsrWriter

SCRATCH_DPATH = pathlib.Path("/tmp/biojepac_bench")
"""Large files live here, never in the repo."""
REPO_DPATH = pathlib.Path(__file__).resolve().parents[1]


def write_synthetic(fpath: pathlib.Path, n_cells: int, n_genes: int, density: float, seed: int = 0, chunk: int = 20_000,
                    genes: list[str] | None = None, log1p_target: float | None = None,
                    contexts: tuple[str, ...] = ("k562", "rpe1")) -> dict:
    """A canonical screen with integer counts in CSR, written `chunk` cells at a time (flat memory).

    Genes differ in detection rate (gamma-distributed around `density`) and in count size, so HVG
    selection has real signal; 10% of cells are `non-targeting`, `contexts` x 2 batches. `genes` names
    the genes (default G0000...); `log1p_target` writes log1p(x / total * target) instead of counts, with
    the transform recorded in `uns` as `data prepare` records it.
    """
    if fpath.exists():
        with h5py.File(fpath, "r") as f:
            if tuple(f["X"].attrs["shape"]) == (n_cells, n_genes):
                return {"fpath": str(fpath), "bytes": fpath.stat().st_size, "cached": True}
    fpath.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    p_g = np.clip(rng.gamma(2.0, density / 2.0, n_genes), 0, 0.9)
    scale_g = rng.gamma(2.0, 1.0, n_genes)
    tmp = fpath.with_name(fpath.name + ".tmp")
    t0 = time.perf_counter()
    with h5py.File(tmp, "w") as f:
        writer = CsrWriter(f, n_genes, chunk_nnz=1 << 18)
        for start in range(0, n_cells, chunk):
            c = min(chunk, n_cells - start)
            mask = rng.random((c, n_genes), dtype=np.float32) < p_g[None, :]
            rows, cols = np.nonzero(mask)
            vals = (1 + rng.poisson(scale_g[cols])).astype(np.float32)
            m = sp.csr_matrix((vals, (rows, cols)), shape=(c, n_genes))
            if log1p_target is not None:
                totals = np.asarray(m.sum(1)).ravel().clip(1)
                m.data = np.log1p(m.data / np.repeat(totals / log1p_target, np.diff(m.indptr))).astype(np.float32)
            writer.append(m)
        writer.close(n_cells)
        perts = np.array(["non-targeting"] + [f"G{i:04d}" for i in range(100)])
        label = perts[np.where(rng.random(n_cells) < 0.1, 0, rng.integers(1, len(perts), n_cells))]
        obs = pd.DataFrame(
            {
                "target_gene": pd.Categorical(label),
                "context": pd.Categorical(rng.choice(list(contexts), n_cells)),
                "batch": pd.Categorical(rng.choice(["b0", "b1"], n_cells)),
                "pert_type": pd.Categorical(["CRISPRi"] * n_cells),
            },
            index=pd.RangeIndex(n_cells).astype(str),
        )
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", pd.DataFrame(index=genes or [f"G{i:04d}" for i in range(n_genes)]))
        transform = {"applied": "normalize_total+log1p", "target_sum": float(log1p_target)} if log1p_target else None
        ad.io.write_elem(f, "uns", {"biojepac": {"transform": transform}} if transform else {})
    tmp.replace(fpath)
    return {"fpath": str(fpath), "bytes": fpath.stat().st_size, "write_s": time.perf_counter() - t0, "cached": False}


def run_measured(code: str, env: dict | None = None, as_limit_bytes: int | None = None, timeout: int = 1800,
                 niceness: int = 10) -> dict:
    """Run `code` in a fresh Python at `niceness`; it must print one JSON line last. Adds `peak_rss_mb` (VmHWM of
    that process only) and `wall_s`. `as_limit_bytes` caps its address space (`prlimit --as`)."""
    # VmHWM is the peak of this process image only; ru_maxrss would also count the parent's RSS at fork.
    tail = ("\nimport re as _re, json as _j\n_hwm = int(_re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "print(_j.dumps({'peak_rss_mb': _hwm / 1024}))\n")
    cmd = ["nice", "-n", str(niceness)]
    if as_limit_bytes:
        cmd += ["prlimit", f"--as={as_limit_bytes}"]
    cmd += [sys.executable, "-c", code + tail]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_DPATH)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"ok": False, "returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:], "wall_s": wall}
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    return {"ok": True, **lines[-2], **lines[-1], "wall_s": wall, "loadavg_1m_after": os.getloadavg()[0]}


def write_results(name: str, title: str, result, note: str, rows: list[dict], cols: list[str]) -> None:
    """benchmarks/results/NAME.json (`result`) and NAME.md (title, note, table of `rows`); print the table."""
    out = REPO_DPATH / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(f"# {title}\n\n" + note + md_table(rows, cols) + "\n")
    print(note + md_table(rows, cols))


def md_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
