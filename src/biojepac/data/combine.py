"""`biojepac data combine`: several Perturb-seq screens in, one screen out, in one gene space, out of core.

The flow, top-down in `combine_screens`:
1. `read_source`, per input: its canonical obs (`load.canonical_obs`: target_gene, context, batch, ...), its
   gene names matched to current symbols (`genes.harmonize_names`: symbols, aliases, Ensembl IDs with
   versions ignored) and its perturbation labels likewise, and one pass over its values deciding how it
   reaches the common normalisation, log1p(x / total * `target`):
   - raw counts (integer X, or `layers['counts']` when X is log1p of an unknown scale): normalised from
     its totals over every gene the dataset measured (before any gene is dropped);
   - log1p of a known per-cell total T (recorded by `data prepare` in `uns['biojepac']['transform']`, or
     stated by the user as `--log1p-targets NAME=T`): rescaled exactly, log1p(expm1(v) * target / T);
   - anything else (log1p of an unknown scale, no raw counts): refused, one line naming the file.
2. `choose_genes`: the gene space (union, intersection, a list file, or the top-k highly variable genes
   ranked across datasets as scanpy's `highly_variable_genes(batch_key=...)` ranks batches).
3. One more pass per dataset writes its normalised rows, columns moved into the gene space, as chunked
   CSR (the layout `data prepare-ooc` writes and `data.stream` reads): to one `.h5ad`, or, with
   `--shard-cells N`, to a folder of `.h5ad` shards of at most N cells (each one dataset's rows, with their
   obs, the common var and the provenance), which `train state-stream --shards FOLDER` reads. Memory holds
   one row block of one dataset at a time plus the per-cell labels: of every cell for one `.h5ad` (its obs is
   written whole), of one dataset at a time for shards (re-read from its input when its rows are written).

Genes a dataset did not measure hold no value in X (sparse: nothing stored, i.e. 0) and are marked False in
`var["measured:NAME"]`; `obs["dataset"]` names each cell's dataset, `gene_masks` turns the two into masks.
Our one documented treatment: the ST model and BioJEPAC's stream pretraining leave unmeasured genes out
of their losses (masked loss); models that read X as it is see 0 there (docs/data.md).
`context` is written `dataset:cell_line`, `batch` `dataset:batch`; `uns['biojepac']['combine']` records every
source file (path, sha256, size), how its values were normalised, and its gene mapping counts and names.
"""

import dataclasses
import os
import pathlib
import re
import time
import typing

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.data.genes import SymbolTable, get_symbols, harmonize_labels, harmonize_names
from biojepac.data.load import ScreenColumns, canonical_obs, validate_labels
from biojepac.data.ooc import CsrWriter, hvg_from_moments, row_facts
from biojepac.data.values import classify, size_factors
from biojepac.errors import InputError
from biojepac.io import temp_sibling, write_dir_atomic

DATASET_COL = "dataset"
"""obs column naming each cell's source dataset."""
MEASURED_PREFIX = "measured:"
"""var column `measured:NAME`: whether dataset NAME measured the gene."""
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")


@dataclasses.dataclass(frozen=True)
class CombineConfig:
    screens: tuple[str, ...] = ()
    """Input screens as NAME=PATH (canonical .h5ad: obs target_gene, optional context/batch; `data prepare`
    writes them). NAME goes to obs `dataset` and prefixes `context` and `batch`."""
    out: pathlib.Path = pathlib.Path("combined.h5ad")
    """Output: one chunked CSR .h5ad (log1p), readable backed and by the stream loader; with --shard-cells, a
    folder of shards. Written atomically."""
    shard_cells: int = 0
    """0: write one .h5ad at --out. N > 0: write --out as a folder of .h5ad shards (`shard-00000.h5ad`, ...)
    of at most N cells each, a shard never mixing datasets; memory then no longer grows with the total cells."""
    gene_space: str = "union"
    """union | intersection | list:PATH (one gene per line, any identifier style; its names and order are
    kept) | hvg:K (top K highly variable genes ranked across datasets)."""
    target: float = 1e4
    """The normalize_total target every dataset is brought to: log1p(x / cell total * target)."""
    log1p_targets: tuple[str, ...] = ()
    """NAME=TOTAL for a dataset holding only log1p values: the per-cell total it was normalised to
    (scanpy's target_sum); it is then rescaled exactly. Without it (or a record in the file) such data is refused."""
    symbols: str = "packaged"
    """Gene symbol table for matching names across datasets (`packaged`: the one shipped; or a TSV path)."""
    chunk_rows: int = 8192
    """Cells read and written per block: memory scales with this, not with the inputs."""
    hvg_flavor: typing.Literal["seurat", "cell_ranger"] = "seurat"
    """scanpy HVG flavour for `hvg:K`."""
    checksum: bool = True
    """Record each input's sha256 in the provenance (one extra sequential read per file)."""


@dataclasses.dataclass
class Source:
    """One input, read and checked: what the writing pass needs."""

    name: str
    fpath: pathlib.Path
    obs: pd.DataFrame | None
    """The output's obs rows for this dataset (canonical columns, prefixed labels); None when not kept
    (shard output: `source_obs` re-reads them when the dataset's rows are written)."""
    genes: list[str]
    """Matching key (current symbol, else the name as given, Ensembl version dropped) per input gene."""
    elem: str
    """Where the values are read: "X" or "layers/counts"."""
    values: typing.Literal["counts", "log1p"]
    totals: np.ndarray | None
    """Per-cell count totals (float32, as scanpy's normalize_total), for counts."""
    source_total: float | None
    """The total a log1p input was normalised to."""
    record: dict
    """Provenance for `uns`."""


def run_combine(cfg: CombineConfig) -> None:
    t0 = time.perf_counter()
    summary = combine_screens(cfg)
    for name, rec in summary["sources"].items():
        gm = rec["gene_map"]
        print(f"{name}: {rec['n_cells']:,} cells, {rec['n_genes']:,} genes ({gm['n_current']} current, {gm['n_renamed']} renamed, "
              f"{gm['n_ambiguous']} ambiguous, {gm['n_unknown']} unmatched; {gm['n_in_space']} in the gene space); {rec['normalisation']}")
    shards = f" in {len(summary['shards'])} shards" if "shards" in summary else ""
    print(f"wrote {cfg.out}: {summary['n_cells']:,} cells x {summary['n_genes']:,} genes ({cfg.gene_space}){shards}, "
          f"in {time.perf_counter() - t0:.1f} s")


def combine_screens(cfg: CombineConfig) -> dict:
    """Write the combined screen to `cfg.out` (atomically); returns the provenance record."""
    screens = parse_pairs(cfg.screens, "--screens")
    if not screens:
        raise InputError("--screens: give at least one NAME=PATH")
    for name in screens:
        if ":" in name:
            raise InputError(f"--screens: dataset name {name!r} may not contain ':' (it separates dataset and cell line)")
    log1p_targets = {k: _positive(v, f"--log1p-targets {k}") for k, v in parse_pairs(cfg.log1p_targets, "--log1p-targets").items()}
    unknown = sorted(set(log1p_targets) - set(screens))
    if unknown:
        raise InputError(f"--log1p-targets: {unknown[0]!r} is not a dataset of --screens ({', '.join(screens)})")
    if not cfg.target > 0:
        raise InputError(f"--target must be > 0, got {cfg.target!r}")
    if cfg.shard_cells < 0:
        raise InputError(f"--shard-cells must be >= 0, got {cfg.shard_cells}")
    if cfg.shard_cells and pathlib.Path(cfg.out).is_file():
        raise InputError(f"--out {cfg.out}: is a file; with --shard-cells give the folder to write the shards to")
    if cfg.shard_cells and pathlib.Path(cfg.out).is_dir():  # replaced whole: only an earlier shard output may be
        other = [f.name for f in pathlib.Path(cfg.out).iterdir() if not re.fullmatch(r"shard-\d{5}\.h5ad", f.name)]
        if other:
            raise InputError(f"--out {cfg.out}: a folder holding other files ({other[0]!r}); the shards replace the whole "
                             "folder, so give a new one or an earlier shard output")
    table = get_symbols(cfg.symbols)
    sources = []
    for name, path in screens.items():
        sources.append(read_source(name, pathlib.Path(path), cfg, table, log1p_targets.get(name)))
        if cfg.shard_cells:
            sources[-1].obs = None  # one dataset's labels at a time: re-read when its rows are written
    names, keys = choose_genes(cfg, sources, table)
    return write_combined(cfg, sources, names, keys, table)


def parse_pairs(items: tuple[str, ...], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag}: {item!r} is not NAME=VALUE")
        if name in out:
            raise InputError(f"{flag}: {name!r} given twice")
        out[name] = value
    return out


def _positive(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not a number") from None
    if not value > 0:
        raise InputError(f"{flag}: must be > 0, got {text!r}")
    return value


# --- 1. reading and checking each input ---


def read_source(name: str, fpath: pathlib.Path, cfg: CombineConfig, table: SymbolTable, log1p_target: float | None) -> Source:
    if not fpath.is_file():
        raise InputError(f"{fpath}: file not found (dataset {name!r})")
    source = str(fpath)
    try:
        f = h5py.File(fpath, "r")
    except OSError as err:
        raise InputError(f"{fpath}: not a readable .h5ad file ({err})") from err
    with f:
        if "X" not in f or "obs" not in f or "var" not in f:
            raise InputError(f"{fpath}: not an .h5ad screen (needs X, obs and var)")
        obs, var = _canonical_obs(f, source), ad.io.read_elem(f["var"])
        validate_labels(obs, var.index, source)
        in_names = [str(g) for g in var.index]
        genes, gene_report = match_genes(in_names, table)
        elem, values, totals, source_total, how = _decide_values(f, source, cfg, obs, in_names, log1p_target)
    out_obs, label_report = output_obs(name, obs, totals, table)
    record = {
        "path": str(fpath.resolve()),
        "size_bytes": fpath.stat().st_size,
        "sha256": _sha256(fpath) if cfg.checksum else "not computed (--no-checksum)",
        "n_cells": len(obs), "n_genes": len(in_names),
        "values": values, "values_from": elem, "normalisation": how,
        "gene_map": _gene_record(gene_report, table),
        "label_map": {"n_renamed": len(label_report.renamed), "renamed": dict(label_report.renamed),
                      "ambiguous": {k: ",".join(v) for k, v in label_report.ambiguous.items()}},
    }
    return Source(name, fpath, out_obs, genes, elem, values, totals, source_total, record)


def _canonical_obs(f: h5py.File, source: str) -> pd.DataFrame:
    obs = ad.io.read_elem(f["obs"])
    # A canonical file keeps its own modality per cell (Norman is CRISPRa); CRISPRi where it has none.
    columns = ScreenColumns(pert_type=schema.PERT_TYPE_COL) if schema.PERT_TYPE_COL in obs.columns else ScreenColumns()
    return canonical_obs(obs, columns, source)


def output_obs(name: str, obs: pd.DataFrame, totals: np.ndarray | None, table: SymbolTable):
    """(The output's obs rows for dataset `name`, the perturbation-label report)."""
    cat = pd.Categorical(obs[schema.PERT_COL].astype(str))
    labels, label_report = harmonize_labels(list(cat.categories), table)
    uniq = pd.Index(labels).unique()  # two old labels may map to one current symbol
    out_obs = pd.DataFrame({
        schema.PERT_COL: pd.Categorical.from_codes(uniq.get_indexer(labels)[cat.codes], uniq),
        schema.CONTEXT_COL: _prefixed(name, obs[schema.CONTEXT_COL]),
        schema.BATCH_COL: _prefixed(name, obs[schema.BATCH_COL]),
        schema.PERT_TYPE_COL: pd.Categorical(obs[schema.PERT_TYPE_COL].astype(str)),
        DATASET_COL: pd.Categorical.from_codes(np.zeros(len(obs), dtype=np.int8), [name]),
        "total_counts": totals if totals is not None else np.full(len(obs), np.nan, np.float32),
    }, index=pd.Index([f"{name}:{c}" for c in obs.index.astype(str)]))
    if schema.GUIDE_COL in obs.columns:
        out_obs[schema.GUIDE_COL] = pd.Categorical(obs[schema.GUIDE_COL].astype(str))
    return out_obs, label_report


def source_obs(src: Source, table: SymbolTable) -> pd.DataFrame:
    """`src`'s output obs rows: kept, or re-read from its file (checked when it was first read)."""
    if src.obs is not None:
        return src.obs
    with h5py.File(src.fpath, "r") as f:
        obs = _canonical_obs(f, str(src.fpath))
    return output_obs(src.name, obs, src.totals, table)[0]


def match_genes(names: list[str], table: SymbolTable) -> tuple[list[str], object]:
    """The key each gene is matched on across datasets: its current symbol (`harmonize_names`), else the
    name as given with an Ensembl version suffix dropped (when that stays unique)."""
    new, report = harmonize_names(names, table)
    stripped = [_ENSEMBL_VERSION.sub(r"\1", n) for n in new]
    seen: dict[str, int] = {}
    for n in stripped:
        seen[n] = seen.get(n, 0) + 1
    return [s if seen[s] == 1 else n for s, n in zip(stripped, new)], report


def _gene_record(report, table: SymbolTable) -> dict:
    return {"table": table.fpath, "n_current": report.n_current, "n_renamed": len(report.renamed),
            "n_ambiguous": len(report.ambiguous), "n_collisions": len(report.collisions), "n_unknown": len(report.unknown),
            "renamed": dict(report.renamed), "ambiguous": {k: ",".join(v) for k, v in report.ambiguous.items()},
            "collisions": {k: ",".join(v) for k, v in report.collisions.items()}, "unknown": list(report.unknown)}


def _prefixed(name: str, col: pd.Series) -> pd.Categorical:
    cat = pd.Categorical(col.astype(str))
    return pd.Categorical.from_codes(cat.codes, [f"{name}:{c}" for c in cat.categories])


def _sha256(fpath: pathlib.Path) -> str:
    from biojepac.data.download import hash_file

    return hash_file(fpath)["sha256"]


def _decide_values(f: h5py.File, source: str, cfg: CombineConfig, obs: pd.DataFrame, genes: list[str],
                   log1p_target: float | None):
    """(elem, values, totals, source_total, how): where the values come from and how they are normalised."""
    totals, vmax, fractional = _scan(f["X"], cfg.chunk_rows, source, obs, genes)
    if not fractional:
        if log1p_target is not None:
            raise InputError(f"{source}: X holds raw counts (integers); --log1p-targets does not apply to it")
        return "X", "counts", totals, None, f"normalize_total (target {cfg.target:g}) + log1p from raw counts in X"
    classify(vmax, False, source)  # neither counts nor log1p -> one line
    recorded = _recorded_total(f)
    if log1p_target is not None:
        return "X", "log1p", None, log1p_target, f"log1p of total {log1p_target:g} (given by --log1p-targets), rescaled to {cfg.target:g}"
    if recorded is not None:
        return "X", "log1p", None, recorded, f"log1p of total {recorded:g} (recorded in uns), rescaled to {cfg.target:g}"
    if "layers" in f and "counts" in f["layers"]:
        totals, _, fractional = _scan(f["layers/counts"], cfg.chunk_rows, f"{source} layers['counts']", obs, genes)
        if fractional:
            raise InputError(f"{source}: layers['counts'] has non-integer values; it is not raw counts")
        return "layers/counts", "counts", totals, None, f"normalize_total (target {cfg.target:g}) + log1p from layers['counts']"
    raise InputError(
        f"{source}: X holds log1p values normalised to an unknown total and the file has no raw counts "
        f"(integer X or layers['counts']), so it cannot be brought to the common normalisation (target {cfg.target:g}); "
        "give the raw counts, or --log1p-targets NAME=TOTAL if you know the total it was normalised to")


def _recorded_total(f: h5py.File) -> float | None:
    """The normalize_total target a `data prepare` output recorded, if any."""
    path = f"uns/{schema.UNS_KEY}/transform"
    if path not in f:
        return None
    rec = ad.io.read_elem(f[path])
    if str(rec.get("applied")) != "normalize_total+log1p" or "target_sum" not in rec:
        return None
    return float(rec["target_sum"])


def iter_blocks(elem, chunk_rows: int) -> typing.Iterator[tuple[int, sp.csr_matrix]]:
    """(first row, CSR block) over a backed matrix (CSR group or dense dataset), via anndata's lazy Dask reader."""
    x = ad.experimental.read_elem_lazy(elem, chunks=(chunk_rows, -1))
    row0 = 0
    for block in x.to_delayed().ravel():
        m = block.compute()
        m = m if isinstance(m, sp.csr_matrix) else sp.csr_matrix(np.asarray(m))
        yield row0, m
        row0 += m.shape[0]


def _scan(elem, chunk_rows: int, source: str, obs: pd.DataFrame, genes: list[str]) -> tuple[np.ndarray, float, bool]:
    """Per-cell totals, the max and whether any value is fractional; NaN, inf or negative values refused."""
    totals, vmax, fractional = [], 0.0, False
    for row0, m in iter_blocks(elem, chunk_rows):
        t, mx, fr, bad = row_facts(m)
        if bad is not None:
            row, col, value = bad
            raise InputError(f"{source}: value {value:g} at cell {str(obs.index[row0 + row])!r}, gene {genes[col]!r}; "
                             "expression must be finite and >= 0")
        totals.append(t)
        vmax, fractional = max(vmax, mx), fractional or fr
    return (np.concatenate(totals) if totals else np.zeros(0, np.float32)), vmax, fractional


def normalise_block(m: sp.csr_matrix, src: Source, row0: int, target: float) -> sp.csr_matrix:
    """Rows of `src` at the common normalisation, log1p(x / total * target), float32 (scanpy's arithmetic)."""
    m = m.astype(np.float32)
    if src.values == "counts":
        factor = size_factors(src.totals[row0 : row0 + m.shape[0]], target)
        m.data = np.log1p(m.data / np.repeat(factor, np.diff(m.indptr)))
    elif src.source_total != target:
        m.data = np.log1p(np.expm1(m.data.astype(np.float64)) * (target / src.source_total)).astype(np.float32)
    m.eliminate_zeros()
    return m


# --- 2. the gene space ---


def choose_genes(cfg: CombineConfig, sources: list[Source], table: SymbolTable) -> tuple[list[str], list[str]]:
    """(output gene names, their matching keys), in output order."""
    spec = cfg.gene_space
    union = list(dict.fromkeys(g for s in sources for g in s.genes))
    if spec == "union":
        return union, union
    if spec == "intersection":
        common = set.intersection(*(set(s.genes) for s in sources))
        keys = [g for g in sources[0].genes if g in common]
        if not keys:
            raise InputError("--gene-space intersection: the datasets share no gene (after matching symbols)")
        return keys, keys
    kind, _, arg = spec.partition(":")
    if kind == "list" and arg:
        names = read_gene_list(pathlib.Path(arg))
        keys, _ = match_genes(names, table)
        dup = pd.Index(keys)[pd.Index(keys).duplicated()]
        if len(dup):
            raise InputError(f"{arg}: gene {dup[0]!r} is listed twice (after matching symbols)")
        return names, keys
    if kind == "hvg" and arg.isdigit() and int(arg) > 0:
        keys = hvg_across(sources, int(arg), cfg)
        return keys, keys
    raise InputError(f"--gene-space {spec!r}: use union, intersection, list:PATH or hvg:K")


def read_gene_list(fpath: pathlib.Path) -> list[str]:
    """One gene per line (first column of a CSV/TSV; quotes stripped; a header `gene*`/`symbol` skipped)."""
    if not fpath.is_file():
        raise InputError(f"{fpath}: gene list not found")
    names = [re.split(r"[,\t]", line)[0].strip().strip('"') for line in fpath.read_text().splitlines() if line.strip()]
    if names and names[0].lower() in ("gene", "genes", "gene_name", "gene_id", "symbol", "gene_symbol"):
        names = names[1:]
    if not names:
        raise InputError(f"{fpath}: gene list is empty")
    return names


def hvg_across(sources: list[Source], k: int, cfg: CombineConfig) -> list[str]:
    """Top-k genes ranked as scanpy's `highly_variable_genes(batch_key=...)` with datasets as batches: by the
    number of datasets where the gene is among its k most variable, then by its mean normalised dispersion.
    Each dataset's dispersions come from one streamed pass (`ooc.hvg_from_moments`)."""
    union = list(dict.fromkeys(g for s in sources for g in s.genes))
    pos = {g: i for i, g in enumerate(union)}
    n_hv, disp_sum, disp_n = np.zeros(len(union)), np.zeros(len(union)), np.zeros(len(union))
    for src in sources:
        n = len(src.genes)
        mom = np.zeros((2, n))
        with h5py.File(src.fpath, "r") as f:
            for row0, m in iter_blocks(f[src.elem], cfg.chunk_rows):
                v = normalise_block(m, src, row0, cfg.target)
                vals = (np.expm1(v.data) if cfg.hvg_flavor == "seurat" else v.data).astype(np.float64)
                mom += [np.bincount(v.indices, vals, n), np.bincount(v.indices, vals**2, n)]
        df = hvg_from_moments(mom[0], mom[1], src.record["n_cells"], k, cfg.hvg_flavor)
        idx = np.asarray([pos[g] for g in src.genes])
        n_hv[idx] += df["highly_variable"].to_numpy()
        dn = df["dispersions_norm"].to_numpy()
        ok = np.isfinite(dn)
        disp_sum[idx[ok]] += dn[ok]
        disp_n[idx[ok]] += 1
    mean_disp = np.where(disp_n > 0, disp_sum / np.maximum(disp_n, 1), -np.inf)
    order = np.lexsort((np.arange(len(union)), -mean_disp, -n_hv))[:k]
    return [union[i] for i in np.sort(order)]


# --- 3. writing ---


def write_combined(cfg: CombineConfig, sources: list[Source], names: list[str], keys: list[str], table: SymbolTable) -> dict:
    col = {g: j for j, g in enumerate(keys)}
    n_genes = len(keys)
    measured = {}
    for src in sources:
        remap = np.asarray([col.get(g, -1) for g in src.genes], dtype=np.int64)
        measured[src.name] = np.zeros(n_genes, bool)
        measured[src.name][remap[remap >= 0]] = True
        src.record["gene_map"]["n_in_space"] = int((remap >= 0).sum())
    var = pd.DataFrame({"symbol": keys}, index=pd.Index(names))
    var["n_datasets"] = np.sum([m for m in measured.values()], axis=0).astype(np.int32)
    for name, m in measured.items():
        var[MEASURED_PREFIX + name] = m
    prov = {
        "combine": {"gene_space": cfg.gene_space, "target": float(cfg.target), "symbols": table.fpath,
                    "datasets": [s.name for s in sources], "sources": {s.name: s.record for s in sources}},
        "transform": {"input": "combined", "applied": "normalize_total+log1p", "target": str(cfg.target),
                      "target_sum": float(cfg.target)},
        "values": "log1p",
    }
    out = pathlib.Path(cfg.out)
    if cfg.shard_cells:
        shards: list[dict] = []
        write_dir_atomic(out, lambda tmp: shards.extend(write_shards(tmp, cfg, sources, col, var, prov, table)))
        return {**prov["combine"], "n_cells": sum(s["n_cells"] for s in shards), "n_genes": n_genes, "shards": shards}
    obs = _concat_obs([source_obs(s, table) for s in sources])
    tmp = temp_sibling(out)  # hidden; removed by the next run if this one is killed
    try:
        with h5py.File(tmp, "w") as f:
            writer = CsrWriter(f, n_genes, 1 << 18)
            n_rows = 0
            for src in sources:
                for _, m in normalised_blocks(src, cfg, col, n_genes):
                    writer.append(m)
                    n_rows += m.shape[0]
            writer.close(n_rows)
            _write_meta(f, obs, var, prov)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {**prov["combine"], "n_cells": int(n_rows), "n_genes": n_genes}


def normalised_blocks(src: Source, cfg: CombineConfig, col: dict[str, int], n_genes: int) -> typing.Iterator[tuple[int, sp.csr_matrix]]:
    """(first row, block) of `src`'s rows at the common normalisation, in the output's gene space."""
    remap = np.asarray([col.get(g, -1) for g in src.genes], dtype=np.int64)
    with h5py.File(src.fpath, "r") as fin:
        for row0, m in iter_blocks(fin[src.elem], cfg.chunk_rows):
            yield row0, remap_columns(normalise_block(m, src, row0, cfg.target), remap, n_genes)


def write_shards(dpath: pathlib.Path, cfg: CombineConfig, sources: list[Source], col: dict[str, int], var: pd.DataFrame,
                 prov: dict, table: SymbolTable) -> list[dict]:
    """Each dataset's rows as `shard-NNNNN.h5ad` files of at most `cfg.shard_cells` cells; one list entry each."""
    dpath.chmod(0o755)  # mkdtemp made it private; the shards are an ordinary output
    shards: list[dict] = []
    for src in sources:
        obs = source_obs(src, table)
        shard, start = None, 0  # the open shard and its first row in `src`
        for _, m in normalised_blocks(src, cfg, col, len(var)):
            while m.shape[0]:
                if shard is None:
                    fpath = dpath / f"shard-{len(shards):05d}.h5ad"
                    shard = (h5py.File(fpath, "w"), fpath)
                    writer, n = CsrWriter(shard[0], len(var), 1 << 18), 0
                take = min(m.shape[0], cfg.shard_cells - n)
                writer.append(m[:take])
                m, n = m[take:], n + take
                if n == cfg.shard_cells:
                    shards.append(_close_shard(shard, writer, n, obs.iloc[start : start + n], var, prov, src.name, dpath, shards))
                    shard, start = None, start + n
        if shard is not None:
            shards.append(_close_shard(shard, writer, n, obs.iloc[start : start + n], var, prov, src.name, dpath, shards))
        del obs
    return shards


def _close_shard(shard, writer: CsrWriter, n_rows: int, obs: pd.DataFrame, var: pd.DataFrame, prov: dict, dataset: str,
                 dpath: pathlib.Path, done: list[dict]) -> dict:
    f, fpath = shard
    with f:
        writer.close(n_rows)
        if not done:
            _write_meta(f, obs, var, prov)
        else:  # var and uns are every shard's: copied inside HDF5 from the first (anndata writes uns key by key, ~s each)
            f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
            ad.io.write_elem(f, "obs", obs)
            with h5py.File(dpath / done[0]["file"], "r") as first:
                for elem in ("var", "uns"):
                    first.copy(first[elem], f, elem)
    return {"file": fpath.name, "dataset": dataset, "n_cells": int(n_rows)}


def _write_meta(f: h5py.File, obs: pd.DataFrame, var: pd.DataFrame, prov: dict) -> None:
    f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
    ad.io.write_elem(f, "obs", obs)
    ad.io.write_elem(f, "var", var)
    ad.io.write_elem(f, "uns", {schema.UNS_KEY: prov})


def remap_columns(m: sp.csr_matrix, remap: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """`m` with column j moved to `remap[j]` (dropped where -1), as a CSR matrix of `n_genes` columns."""
    new = remap[m.indices]
    keep = new >= 0
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m.shape[0]))])
    return sp.csr_matrix((m.data[keep], new[keep], indptr), shape=(m.shape[0], n_genes))


def _concat_obs(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Row-wise concatenation keeping categorical columns categorical (union of categories)."""
    from pandas.api.types import union_categoricals

    cols = list(dict.fromkeys(c for p in parts for c in p.columns))
    out = {}
    for c in cols:
        pieces = [p[c] if c in p.columns else pd.Series([""] * len(p), index=p.index, dtype="category") for p in parts]
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in pieces):
            out[c] = union_categoricals([pd.Categorical(p) for p in pieces])
        else:
            out[c] = np.concatenate([p.to_numpy() for p in pieces])
    return pd.DataFrame(out, index=pd.Index(np.concatenate([p.index.to_numpy() for p in parts])))


# --- for readers of a combined screen ---


def measured_table(var: pd.DataFrame) -> tuple[list[str], np.ndarray] | None:
    """(dataset names, (datasets x genes) measured mask) from a combined screen's var; None for a plain one."""
    cols = [c for c in var.columns if str(c).startswith(MEASURED_PREFIX)]
    if not cols:
        return None
    return [c[len(MEASURED_PREFIX):] for c in cols], np.stack([var[c].to_numpy(bool) for c in cols])


def dataset_index(names: list[str], datasets, source: str) -> np.ndarray:
    """Position in `names` of each of `datasets` (obs `dataset` values); an unknown one is an InputError."""
    idx = pd.Index(names).get_indexer(np.asarray(datasets, dtype=str))
    if (idx < 0).any():
        bad = str(np.asarray(datasets)[np.argmax(idx < 0)])
        raise InputError(f"{source}: obs {DATASET_COL!r} names dataset {bad!r}, which has no var column {MEASURED_PREFIX + bad!r}")
    return idx.astype(np.int32)


def gene_masks(obs: pd.DataFrame, var: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-cell dataset code, (datasets x genes) measured mask) of a combined screen; None for a plain one.
    Cell i measured gene g iff `masks[codes[i], g]`."""
    table = measured_table(var)
    if table is None or DATASET_COL not in obs.columns:
        return None
    cat = pd.Categorical(obs[DATASET_COL].astype(str))
    return dataset_index(table[0], cat.categories, "screen")[cat.codes], table[1]
