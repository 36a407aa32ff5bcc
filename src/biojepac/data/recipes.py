"""Public Perturb-seq datasets: where they live, how their columns map to ours, and how to prepare them.

`biojepac data fetch NAME` puts the raw files under `DATA_DPATH/NAME/raw/`; `biojepac data prepare NAME`
loads and validates them (`load_screen`), optionally harmonises gene symbols, normalises
(normalize_total + log1p, recorded), optionally keeps HVGs, and writes the canonical screen to
`DATA_DPATH/NAME/NAME.h5ad` atomically.

Checksums, as each source publishes them (`fetch` verifies what is known and says what it checked):
- figshare+ (Replogle 2022, article 20029387): the figshare API lists each file's size and `computed_md5`;
  both are recorded (read from the API's file list as quoted by two independent public manifests, since
  figshare cannot be reached from here).
- GEO (Nadig 2025, GSE264667): GEO publishes no checksum for supplementary files, only their size on the FTP
  listing; the size (as a public manifest quotes it) is recorded and checked.
- Harvard Dataverse (GEARS' K562 package): Dataverse computes an MD5 per file (shown on the file page), but
  we could not read it here; neither md5 nor size is recorded, so `fetch` checks readability (the zip opens).
- VCC 2025 (behind a registration): no checksum or size is published; the user supplies the files.
"""

import dataclasses
import os
import pathlib
import time
import typing
import zipfile

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tyro

from biojepac.data import schema
from biojepac.data.download import RemoteFile, download, verify
from biojepac.data.genes import get_symbols, harmonize_genes, harmonize_labels
from biojepac.data.load import CONTROL_ALIASES, ScreenColumns, check_same_genes, load_screen
from biojepac.data.values import Expect
from biojepac.errors import InputError
from biojepac.io import write_h5ad_atomic


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One dataset."""

    name: str
    description: str
    page: str
    """Human-readable page to get the files from (shown when a file must be fetched by hand)."""
    files: tuple[RemoteFile, ...]
    screen_fname: str
    """The `.h5ad` (under raw/) holding the screen."""
    columns: ScreenColumns
    expect: Expect
    n_hvg: int
    """Highly variable genes kept by default (0: keep all genes)."""
    backed: bool = False
    """Open the raw file in backed mode (too large to read whole)."""
    extract_from: str | None = None
    """Zip archive (one of `files`) that `screen_fname` is extracted from."""
    gene_list_fname: str | None = None
    """A one-gene-per-line file the prepared genes must equal, in order (VCC's gene_names.csv)."""


_FIGSHARE = "https://plus.figshare.com/ndownloader/files/"
_FIGSHARE_PAGE = "https://plus.figshare.com/articles/dataset/20029387 (processed h5ad; SRA/GEO manifests: article 20022944)"
_GEO = "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE264nnn/GSE264667/suppl/"
# Replogle-lab single-cell h5ad layout (also used by Nadig 2025): obs gene / gem_group / sgID_AB,
# controls 'non-targeting', var index Ensembl IDs with symbols in var['gene_name'], raw integer UMIs.
_WEISSMAN = dict(pert="gene", batch="gem_group", pert_type="CRISPRi", gene_symbol="gene_name")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="replogle22_k562_essential_gears",
            description="Replogle 2022 K562 essential CRISPRi in GEARS packaging: 5,000 HVGs, log1p, ~1,087 perturbations.",
            page="https://dataverse.harvard.edu/api/access/datafile/7458695 (GEARS PertData 'replogle_k562_essential')",
            # Dataverse shows an MD5 on the file page; not readable from here, so none is recorded.
            files=(RemoteFile("replogle_k562_essential.zip", "https://dataverse.harvard.edu/api/access/datafile/7458695"),),
            screen_fname="perturb_processed.h5ad",
            extract_from="replogle_k562_essential.zip",
            # GEARS writes `GENE+ctrl` for single perturbations and `ctrl` for controls.
            columns=ScreenColumns(pert="condition", context="cell_type", pert_type="CRISPRi",
                                  control_labels=("ctrl",), gene_symbol="gene_name"),
            expect="log1p",
            n_hvg=0,
        ),
        Recipe(
            name="replogle22_k562_essential",
            description="Replogle 2022 K562 essential-gene CRISPRi, raw single-cell UMIs (~10.7 GB).",
            page=_FIGSHARE_PAGE,
            files=(RemoteFile("K562_essential_raw_singlecell_01.h5ad", _FIGSHARE + "35773219", md5="4f1122ce1c7f13299a68df6459a266d3",
                                size_bytes=10_661_879_995),),
            screen_fname="K562_essential_raw_singlecell_01.h5ad",
            columns=ScreenColumns(**_WEISSMAN, guide="sgID_AB", default_context="K562"),
            expect="counts", n_hvg=5000, backed=True,
        ),
        Recipe(
            name="replogle22_k562_gwps",
            description="Replogle 2022 K562 genome-wide CRISPRi, raw single-cell UMIs (~66 GB; use --max-cells-per-pert).",
            page=_FIGSHARE_PAGE,
            files=(RemoteFile("K562_gwps_raw_singlecell_01.h5ad", _FIGSHARE + "35775507", md5="887e3e6a8c8df6eadf7a3030a53c9546",
                                size_bytes=65_830_941_948),),
            screen_fname="K562_gwps_raw_singlecell_01.h5ad",
            columns=ScreenColumns(**_WEISSMAN, guide="sgID_AB", default_context="K562"),
            expect="counts", n_hvg=5000, backed=True,
        ),
        Recipe(
            name="replogle22_rpe1",
            description="Replogle 2022 RPE1 essential-gene CRISPRi, raw single-cell UMIs (~8.7 GB).",
            page=_FIGSHARE_PAGE,
            files=(RemoteFile("rpe1_raw_singlecell_01.h5ad", _FIGSHARE + "35775606", md5="6a2a9d0d2bf4ec147f4d1104043b268c",
                                size_bytes=8_700_873_216),),
            screen_fname="rpe1_raw_singlecell_01.h5ad",
            columns=ScreenColumns(**_WEISSMAN, guide="sgID_AB", default_context="RPE1"),
            expect="counts", n_hvg=5000, backed=True,
        ),
        # Nadig 2025: same lab layout; we do not rely on a guide column being present.
        Recipe(
            name="nadig25_hepg2",
            description="Nadig 2025 HepG2 essential-gene CRISPRi, raw single-cell UMIs (GEO GSE264667, ~5.6 GB).",
            page="https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE264667",
            files=(RemoteFile("GSE264667_hepg2_raw_singlecell_01.h5ad", _GEO + "GSE264667_hepg2_raw_singlecell_01.h5ad",
                                size_bytes=5_614_460_941),),
            screen_fname="GSE264667_hepg2_raw_singlecell_01.h5ad",
            columns=ScreenColumns(**_WEISSMAN, default_context="HepG2"),
            expect="counts", n_hvg=5000, backed=True,
        ),
        Recipe(
            name="nadig25_jurkat",
            description="Nadig 2025 Jurkat essential-gene CRISPRi, raw single-cell UMIs (GEO GSE264667, ~9.4 GB).",
            page="https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE264667",
            files=(RemoteFile("GSE264667_jurkat_raw_singlecell_01.h5ad", _GEO + "GSE264667_jurkat_raw_singlecell_01.h5ad",
                                size_bytes=9_366_490_264),),
            screen_fname="GSE264667_jurkat_raw_singlecell_01.h5ad",
            columns=ScreenColumns(**_WEISSMAN, default_context="Jurkat"),
            expect="counts", n_hvg=5000, backed=True,
        ),
        Recipe(
            name="vcc25_h1",
            description="Virtual Cell Challenge 2025 H1 hESC CRISPRi training data (user-supplied; 18,080 genes, raw counts).",
            page="https://virtualcellchallenge.org (download after registering)",
            files=(RemoteFile("adata_Training.h5ad", None), RemoteFile("pert_counts_Validation.csv", None),
                   RemoteFile("gene_names.csv", None)),
            screen_fname="adata_Training.h5ad",
            columns=ScreenColumns(pert="target_gene", batch="batch", guide="guide_id", pert_type="CRISPRi", default_context="H1"),
            expect="counts", n_hvg=0,  # the challenge scores all 18,080 genes in their given order
            gene_list_fname="gene_names.csv",
        ),
    ]
}

RecipeName = typing.Literal[tuple(RECIPES)]  # type: ignore[valid-type]

NORMAN_MCFALINE_COLUMNS = ScreenColumns(
    pert="perturbation", context="cell_type", pert_type="perturbation_type", control_labels=(schema.CONTROL, *CONTROL_ALIASES)
)
"""The perturbench Norman19 + McFaline23 fixture: `control` controls, CRISPRa (norman19) / CRISPRi (mcfaline23)."""


def load_norman_mcfaline(fpath: str | pathlib.Path) -> ad.AnnData:
    """The shared Norman19+McFaline23 fixture in canonical form (log1p; combos `A+B` kept; control -> non-targeting)."""
    return load_screen(fpath, NORMAN_MCFALINE_COLUMNS, expect="log1p")


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


# --- fetch ---


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    name: tyro.conf.Positional[RecipeName]
    """Dataset to fetch."""
    data_dpath: pathlib.Path = pathlib.Path("data_cache")
    """Cache folder; files go to DATA_DPATH/NAME/raw/."""
    timeout_s: float = 2.0
    """Seconds to wait for the network before giving up with instructions."""


def fetch(cfg: FetchConfig) -> None:
    for line in fetch_recipe(get_recipe(cfg.name), cfg.data_dpath, timeout_s=cfg.timeout_s):
        print(line)


def fetch_recipe(recipe: Recipe, data_dpath: pathlib.Path, *, timeout_s: float = 2.0) -> list[str]:
    """Make sure every raw file of `recipe` is in place and verified; returns one status line per file."""
    raw_dpath = pathlib.Path(data_dpath) / recipe.name / "raw"
    screen_fpath = raw_dpath / recipe.screen_fname
    lines = []
    for remote in recipe.files:
        dest = raw_dpath / remote.fname
        if remote.fname == recipe.extract_from and screen_fpath.is_file():
            lines.append(f"{screen_fpath}: already extracted; archive not needed")
            continue
        if dest.is_file():
            lines.append(f"{dest}: already in place; {verify(dest, remote)}")
            continue
        if remote.url is None:
            raise InputError(f"{recipe.name}: {remote.fname} is supplied by the user: get it from {recipe.page} and put it at {dest}")
        lines.append(f"{dest}: downloaded from {remote.url}; {download(remote, dest, timeout_s)}")
    if recipe.extract_from is not None and not screen_fpath.is_file():
        _extract(raw_dpath / recipe.extract_from, recipe.screen_fname, screen_fpath)
        lines.append(f"{screen_fpath}: extracted from {recipe.extract_from}")
    return lines


def _extract(zip_fpath: pathlib.Path, member_name: str, dest: pathlib.Path) -> None:
    try:
        with zipfile.ZipFile(zip_fpath) as zf:
            members = [m for m in zf.namelist() if pathlib.PurePosixPath(m).name == member_name]
            if not members:
                raise InputError(f"{zip_fpath}: no {member_name} inside the archive")
            tmp = dest.with_name(dest.name + ".part")
            with zf.open(members[0]) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
    except zipfile.BadZipFile as err:
        raise InputError(f"{zip_fpath}: not a valid zip archive ({err}); delete it and fetch again") from err
    os.replace(tmp, dest)


# --- prepare ---


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    name: tyro.conf.Positional[RecipeName]
    """Dataset to prepare (fetch it first)."""
    data_dpath: pathlib.Path = pathlib.Path("data_cache")
    """Cache folder: reads DATA_DPATH/NAME/raw/, writes DATA_DPATH/NAME/NAME.h5ad."""
    symbols: pathlib.Path | None = None
    """Gene symbol table (TSV: symbol, ensembl_ids, aliases) to harmonise gene and perturbation symbols;
    `packaged`: the human table shipped with biojepac; None: keep names as they are."""
    target: str = "median"
    """normalize_total target: 'median' or a number such as 1e4."""
    n_hvg: int = -1
    """Highly variable genes to keep; -1: the dataset's default; 0: keep all genes."""
    max_cells_per_pert: int = 0
    """Keep at most this many cells per (context, perturbation), controls included; 0: keep all."""
    seed: int = 0
    """Seed for the per-perturbation subsample."""


def prepare(cfg: PrepareConfig) -> None:
    start = time.perf_counter()
    out_fpath = prepare_recipe(get_recipe(cfg.name), cfg)
    out = ad.read_h5ad(out_fpath, backed="r")
    n_perts = out.obs[schema.PERT_COL].nunique() - 1
    print(f"wrote {out_fpath}: {out.n_obs} cells x {out.n_vars} genes, {n_perts} perturbations, "
          f"{out.obs[schema.CONTEXT_COL].nunique()} context(s), in {time.perf_counter() - start:.1f} s")
    out.file.close()


def prepare_recipe(recipe: Recipe, cfg: PrepareConfig) -> pathlib.Path:
    """Raw files -> canonical, normalised screen at DATA_DPATH/NAME/NAME.h5ad; returns its path."""
    from biojepac.data.normalize import normalize_log1p, select_hvg  # scanpy is slow to import; `fetch` never needs it

    raw_dpath = pathlib.Path(cfg.data_dpath) / recipe.name / "raw"
    raw_fpath = raw_dpath / recipe.screen_fname
    if not raw_fpath.is_file():
        raise InputError(f"{raw_fpath}: not found; run `biojepac data fetch {recipe.name} --data-dpath {cfg.data_dpath}` first")
    adata = load_screen(raw_fpath, recipe.columns, backed=recipe.backed, expect=recipe.expect)
    if cfg.max_cells_per_pert > 0:
        keep = subsample_rows(adata.obs, cfg.max_cells_per_pert, cfg.seed)
        sub = adata[keep]
        adata = sub.to_memory() if adata.isbacked else sub.copy()
    elif adata.isbacked:
        adata = adata.to_memory()
    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    if recipe.gene_list_fname is not None:  # before harmonisation, which may rename genes
        _check_gene_list(adata, raw_fpath, raw_dpath / recipe.gene_list_fname)

    if cfg.symbols is not None:
        table = get_symbols(cfg.symbols)
        adata, gene_report = harmonize_genes(adata, table)
        labels, label_report = harmonize_labels(adata.obs[schema.PERT_COL], table)
        adata.obs[schema.PERT_COL] = pd.Categorical(labels)
        adata.uns[schema.UNS_KEY]["label_map"] = label_report.to_uns(table.fpath)
        print(f"genes: {gene_report.summary()}\nperturbation labels: {label_report.summary()}")

    target: typing.Literal["median"] | float = "median" if cfg.target == "median" else _as_float(cfg.target)
    adata = normalize_log1p(adata, target=target, expect=adata.uns[schema.UNS_KEY]["values"])
    n_hvg = recipe.n_hvg if cfg.n_hvg < 0 else cfg.n_hvg
    if n_hvg > 0:
        adata = select_hvg(adata, n_hvg, flavor="seurat")
    adata.uns[schema.UNS_KEY]["recipe"] = recipe.name

    out_fpath = pathlib.Path(cfg.data_dpath) / recipe.name / f"{recipe.name}.h5ad"
    write_h5ad_atomic(adata, out_fpath)
    return out_fpath


def subsample_rows(obs: pd.DataFrame, max_cells: int, seed: int) -> np.ndarray:
    """Sorted row indices keeping at most `max_cells` random cells per (context, perturbation)."""
    rng = np.random.default_rng(seed)
    group = obs.groupby([schema.CONTEXT_COL, schema.PERT_COL], observed=True).ngroup().to_numpy()
    # Random priority per cell, then rank within group: the first `max_cells` of each group survive.
    order = np.lexsort((rng.random(len(group)), group))
    starts = np.searchsorted(group[order], group[order], side="left")
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < max_cells])


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--target must be 'median' or a number, got {text!r}") from None


def _check_gene_list(adata: ad.AnnData, screen_fpath: pathlib.Path, list_fpath: pathlib.Path) -> None:
    if not list_fpath.is_file():
        raise InputError(f"{list_fpath}: not found (needed to check the gene order of {screen_fpath})")
    names = [line.strip().strip('"') for line in list_fpath.read_text().splitlines() if line.strip()]
    if names and names[0] not in set(adata.var_names) and len(names) == adata.n_vars + 1:
        names = names[1:]  # a header line
    listed = ad.AnnData(var=pd.DataFrame(index=pd.Index(names)))
    check_same_genes(adata, listed, str(screen_fpath), str(list_fpath))
