"""Every public source's recipe, on a tiny fixture in the published file's layout, gives a screen that
`data combine` accepts; the six combined agree with a direct computation from the raw counts.

Layouts (the files cannot be downloaded here; column names as the releases have them):
- Replogle 2022 K562 essential / genome-wide / RPE1 (figshare `*_raw_singlecell_01.h5ad`) and Nadig 2025
  HepG2 / Jurkat (GEO GSE264667, the same lab's layout): dense float32 UMI counts; var indexed by Ensembl
  gene ID with `gene_name`, `chr`, `start`, `end`, `class`, `strand`, `length`, `in_matrix`, `mean`, `std`,
  `cv`, `fano`; obs `gem_group`, `gene`, `gene_id`, `transcript`, `gene_transcript`, `sgID_AB`, `mitopercent`,
  `UMI_count`, `z_gemgroup_UMI`, `core_scale_factor`, `core_adjusted_UMI_count`; controls `non-targeting`;
  2022-era symbols (SEPT7, QARS).
- VCC 2025 H1 (`adata_Training.h5ad`): CSR raw counts, var indexed by symbol, obs `target_gene`, `guide_id`,
  `batch`; `gene_names.csv` lists the genes in order.
"""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.cli import main
from biojepac.data import schema
from biojepac.data.genes import load_symbols
from biojepac.data.recipes import RECIPES

SYMBOLS = ["GAPDH", "ACTB", "MYC", "TP53", "SEPT7", "QARS", "HSPA8", "RPL3", "RPS6", "EEF1A1", "TUBB", "NPM1"]
CURRENT = {"SEPT7": "SEPTIN7", "QARS": "QARS1"}


def _ensembl(symbol: str) -> str:
    table = load_symbols()
    current = CURRENT.get(symbol, symbol)
    return sorted(e for e, syms in table.ensembl.items() if syms == (current,))[0]


def _weissman(rng, genes: list[str], n_per: int, with_guides: bool) -> ad.AnnData:
    targets = ["non-targeting"] * (2 * n_per) + ["MYC"] * n_per + ["SEPT7"] * n_per
    n = len(targets)
    obs = pd.DataFrame({
        "gem_group": rng.integers(1, 4, n),
        "gene": targets,
        "gene_id": ["non-targeting" if t == "non-targeting" else _ensembl(t) for t in targets],
        "transcript": ["P1P2"] * n,
        "gene_transcript": [f"{i}_{t}_P1P2_{_ensembl(t) if t != 'non-targeting' else 'non-targeting'}" for i, t in enumerate(targets)],
        "mitopercent": rng.random(n).astype(np.float32) * 0.1,
        "UMI_count": np.zeros(n, np.float32),
        "z_gemgroup_UMI": rng.normal(size=n).astype(np.float32),
        "core_scale_factor": np.ones(n, np.float32),
        "core_adjusted_UMI_count": np.zeros(n, np.float32),
    }, index=[f"AAACCCAAG{i:07d}-1" for i in range(n)])
    if with_guides:
        obs.insert(5, "sgID_AB", [f"{t}_+_1234.23-P1P2|{t}_-_1234.56-P1P2" for t in targets])
    x = rng.poisson(rng.gamma(2.0, 3.0, len(genes)), (n, len(genes))).astype(np.float32)
    obs["UMI_count"] = x.sum(1)
    var = pd.DataFrame({"gene_name": genes, "chr": "chr1", "start": 1, "end": 2, "class": "gene_version10", "strand": "+",
                        "length": 1000, "in_matrix": True, "mean": x.mean(0), "std": x.std(0), "cv": 1.0, "fano": 1.0},
                       index=pd.Index([_ensembl(g) for g in genes], name="gene_id"))
    return ad.AnnData(x, obs=obs, var=var)  # dense, as released


def _vcc(rng, genes: list[str]) -> ad.AnnData:
    targets = ["non-targeting"] * 12 + ["MYC"] * 6 + ["QARS"] * 6
    x = rng.poisson(rng.gamma(2.0, 3.0, len(genes)), (len(targets), len(genes))).astype(np.float32)
    obs = pd.DataFrame({"target_gene": targets, "guide_id": [f"{t}_g1" for t in targets], "batch": "Flex_1_01"},
                       index=[f"c{i}" for i in range(len(targets))])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


def test_every_recipe_prepares_a_screen_combine_accepts(tmp_path, capsys):
    rng = np.random.default_rng(0)
    genes_of = {
        "replogle22_k562_essential": SYMBOLS[0:9], "replogle22_k562_gwps": SYMBOLS[0:12], "replogle22_rpe1": SYMBOLS[2:11],
        "nadig25_hepg2": SYMBOLS[1:10], "nadig25_jurkat": SYMBOLS[3:12], "vcc25_h1": [CURRENT.get(g, g) for g in SYMBOLS[0:10]],
    }
    raws = {}
    for name, genes in genes_of.items():
        recipe = RECIPES[name]
        raw = tmp_path / name / "raw"
        raw.mkdir(parents=True)
        if name == "vcc25_h1":
            adata = _vcc(rng, genes)
            (raw / "pert_counts_Validation.csv").write_text("target_gene,n_cells,median_umi_per_cell\nTP53,100,5000\n")
            (raw / "gene_names.csv").write_text("\n".join(genes) + "\n")
        else:
            adata = _weissman(rng, genes, 8, with_guides=name.startswith("replogle"))
        adata.write_h5ad(raw / recipe.screen_fname)
        raws[name] = adata
        assert main(["data", "prepare", name, "--data-dpath", str(tmp_path), "--n-hvg", "0"]) == 0

    out = tmp_path / "combined.h5ad"
    screens = [f"{name}={tmp_path / name / name}.h5ad" for name in genes_of]
    assert main(["data", "combine", "--screens", *screens, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(recorded in uns), rescaled to 10000") == 6  # prepare records its median target
    comb = ad.read_h5ad(out)
    union = [CURRENT.get(g, g) for g in SYMBOLS]
    assert sorted(comb.var_names) == sorted(union)
    for name, genes in genes_of.items():
        measured = comb.var[f"measured:{name}"]
        assert set(comb.var_names[measured.to_numpy()]) == {CURRENT.get(g, g) for g in genes}, name
    assert set(comb.obs[schema.CONTEXT_COL]) == {"replogle22_k562_essential:K562", "replogle22_k562_gwps:K562",
                                                 "replogle22_rpe1:RPE1", "nadig25_hepg2:HepG2", "nadig25_jurkat:Jurkat",
                                                 "vcc25_h1:H1"}
    assert {"SEPTIN7", "QARS1", "MYC", schema.CONTROL} == set(comb.obs[schema.PERT_COL])  # 2022-era labels matched too
    assert "replogle22_rpe1:2" in set(comb.obs[schema.BATCH_COL])  # gem_group kept per dataset

    # Values: every dataset at log1p(counts / its cell total * 1e4), whatever target `prepare` used.
    r = 0
    for name, adata in raws.items():
        x = adata.X.toarray() if sp.issparse(adata.X) else adata.X
        want = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
        cols = comb.var_names.get_indexer([CURRENT.get(g, g) for g in genes_of[name]])
        got = comb.X[r : r + adata.n_obs].toarray()
        np.testing.assert_allclose(got[:, cols], want, rtol=1e-5, atol=1e-5, err_msg=name)
        assert not got[:, np.setdiff1d(np.arange(comb.n_vars), cols)].any()  # unmeasured: nothing stored
        r += adata.n_obs
    rec = comb.uns[schema.UNS_KEY]["combine"]["sources"]
    assert "recorded in uns" in rec["replogle22_rpe1"]["normalisation"]
