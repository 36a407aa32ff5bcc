"""Dataset recipes on tiny files written in each source's raw format; fetch offline and checksum behaviour."""

import dataclasses
import gzip
import hashlib
import time
import zipfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.cli import main
from biojepac.data import schema
from biojepac.data.download import RemoteFile
from biojepac.data.recipes import RECIPES, PrepareConfig, Recipe, fetch_recipe, prepare_recipe, subsample_rows
from biojepac.errors import InputError

GENES = ["GAPDH", "SEPT7", "ACTB", "MYC", "TP53", "RPL3", "RPS6", "EEF1A1", "TUBB", "HSPA8"]


def _counts(rng, n_cells, n_genes=len(GENES)):
    return rng.poisson(rng.gamma(2.0, 2.0, size=n_genes), size=(n_cells, n_genes)).astype(np.float32)


def _raw(tmp_path, name):
    d = tmp_path / name / "raw"
    d.mkdir(parents=True)
    return d


def test_gears_packaging(tmp_path):
    rng = np.random.default_rng(0)
    conds = np.array(["ctrl"] * 30 + ["MYC+ctrl"] * 20 + ["TP53+ctrl"] * 20 + ["ACTB+MYC"] * 10)
    x = _counts(rng, len(conds))
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    var = pd.DataFrame({"gene_name": GENES}, index=[f"ENSG{i:011d}" for i in range(len(GENES))])
    obs = pd.DataFrame({"condition": conds, "cell_type": "K562", "control": (conds == "ctrl").astype(int)},
                       index=[f"c{i}" for i in range(len(conds))])
    src = tmp_path / "perturb_processed.h5ad"
    ad.AnnData(sp.csr_matrix(x), obs=obs, var=var).write_h5ad(src)
    name = "replogle22_k562_essential_gears"
    raw = _raw(tmp_path, name)
    with zipfile.ZipFile(raw / "replogle_k562_essential.zip", "w") as zf:
        zf.write(src, "replogle_k562_essential/perturb_processed.h5ad")

    lines = fetch_recipe(RECIPES[name], tmp_path)
    assert "already in place" in lines[0] and "extracted" in lines[1]
    assert "already extracted" in fetch_recipe(RECIPES[name], tmp_path)[0]  # idempotent

    out = ad.read_h5ad(prepare_recipe(RECIPES[name], PrepareConfig(name=name, data_dpath=tmp_path)))
    counts = out.obs[schema.PERT_COL].astype(str).value_counts().to_dict()
    assert counts == {schema.CONTROL: 30, "MYC": 20, "TP53": 20, "ACTB+MYC": 10}
    assert list(out.var_names) == GENES and set(out.obs[schema.CONTEXT_COL]) == {"K562"}
    assert out.uns[schema.UNS_KEY]["transform"] == {"input": "log1p", "applied": "none"}
    np.testing.assert_allclose(out.X.toarray(), x)


def _replogle_style(rng, n_per=12):
    genes = ["non-targeting"] * (2 * n_per) + ["MYC"] * n_per + ["SEPT7"] * n_per
    obs = pd.DataFrame({
        "gene": genes,
        "gene_id": ["non-targeting" if g == "non-targeting" else f"ENSG-{g}" for g in genes],
        "gem_group": rng.integers(1, 3, size=len(genes)),
        "sgID_AB": [f"{g}_sg{i % 2}" for i, g in enumerate(genes)],
    }, index=[f"cell{i}" for i in range(len(genes))])
    var = pd.DataFrame({"gene_name": GENES}, index=[f"ENSG{i:011d}" for i in range(len(GENES))])
    return ad.AnnData(_counts(rng, len(genes)), obs=obs, var=var)  # dense float32 counts, as released


def test_replogle_style_with_subsample_and_harmonisation(tmp_path):
    rng = np.random.default_rng(1)
    name = "replogle22_k562_essential"
    _replogle_style(rng).write_h5ad(_raw(tmp_path, name) / RECIPES[name].screen_fname)
    table_fpath = tmp_path / "ids.tsv.gz"
    with gzip.open(table_fpath, "wt") as f:
        f.write("symbol\tentrez_id\tgene_type\tensembl_ids\taliases\tname\n")
        f.writelines(f"{g}\t{i}\tprotein-coding\t\t\t{g}\n" for i, g in enumerate(GENES) if g != "SEPT7")
        f.write("SEPTIN7\t989\tprotein-coding\t\tSEPT7\tseptin 7\n")

    cfg = PrepareConfig(name=name, data_dpath=tmp_path, symbols=table_fpath, target="1e4",
                        n_hvg=0, max_cells_per_pert=5)
    out = ad.read_h5ad(prepare_recipe(RECIPES[name], cfg))
    per = out.obs.groupby([schema.CONTEXT_COL, schema.PERT_COL], observed=True).size().to_dict()
    assert per == {("K562", schema.CONTROL): 5, ("K562", "MYC"): 5, ("K562", "SEPTIN7"): 5}
    assert "SEPTIN7" in out.var_names and "SEPT7" not in out.var_names
    assert sp.issparse(out.X) and sp.issparse(out.layers["counts"])
    np.testing.assert_allclose(np.expm1(out.X.toarray()).sum(1), 1e4, rtol=1e-4)
    assert out.obs[schema.GUIDE_COL].str.endswith(("_sg0", "_sg1")).all()
    prov = out.uns[schema.UNS_KEY]
    assert prov["recipe"] == name and prov["transform"]["target_sum"] == 1e4
    assert prov["gene_map"]["renamed"] == {"SEPT7": "SEPTIN7"} and prov["label_map"]["renamed"] == {"SEPT7": "SEPTIN7"}

    out = ad.read_h5ad(prepare_recipe(RECIPES[name], dataclasses.replace(cfg, symbols=None, n_hvg=4)))
    assert out.n_vars == 4 and out.uns[schema.UNS_KEY]["hvg"]["n_top"] == 4


def test_vcc_style_and_gene_list_check(tmp_path):
    rng = np.random.default_rng(2)
    name = "vcc25_h1"
    raw = _raw(tmp_path, name)
    labels = ["non-targeting"] * 10 + ["MYC"] * 6 + ["TP53"] * 6
    obs = pd.DataFrame({"target_gene": labels, "guide_id": [f"{g}_1" for g in labels], "batch": "b1"},
                       index=[f"c{i}" for i in range(len(labels))])
    ad.AnnData(sp.csr_matrix(_counts(rng, len(labels))), obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(raw / "adata_Training.h5ad")
    (raw / "pert_counts_Validation.csv").write_text("target_gene,n_cells,median_umi_per_cell\nRPL3,100,5000\n")
    (raw / "gene_names.csv").write_text("\n".join(GENES) + "\n")
    assert all("already in place" in line for line in fetch_recipe(RECIPES[name], tmp_path))

    assert main(["data", "prepare", name, "--data-dpath", str(tmp_path)]) == 0  # the CLI path end to end
    out = ad.read_h5ad(tmp_path / name / f"{name}.h5ad")
    assert list(out.var_names) == GENES and set(out.obs[schema.CONTEXT_COL]) == {"H1"}
    assert out.uns[schema.UNS_KEY]["transform"]["input"] == "counts"

    (raw / "gene_names.csv").write_text("\n".join([GENES[1], GENES[0], *GENES[2:]]) + "\n")
    with pytest.raises(InputError, match=r"gene order differs.*adata_Training.h5ad.*gene_names.csv"):
        prepare_recipe(RECIPES[name], PrepareConfig(name=name, data_dpath=tmp_path))


def test_fetch_user_supplied_says_where(tmp_path):
    with pytest.raises(InputError, match=r"adata_Training.h5ad is supplied by the user.*virtualcellchallenge.org.*raw/adata_Training.h5ad"):
        fetch_recipe(RECIPES["vcc25_h1"], tmp_path)
    assert main(["data", "fetch", "vcc25_h1", "--data-dpath", str(tmp_path)]) == 2  # the CLI prints one line


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/screen.h5ad", "https://no-such-host.invalid/screen.h5ad"])
def test_fetch_offline_fails_fast_with_instructions(tmp_path, url):
    recipe = Recipe(name="toy", description="", page="", files=(RemoteFile("screen.h5ad", url),),
                    screen_fname="screen.h5ad", columns=RECIPES["vcc25_h1"].columns, expect="counts", n_hvg=0)
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        fetch_recipe(recipe, tmp_path, timeout_s=1.0)
    assert time.perf_counter() - start < 3.0
    msg = str(err.value)
    assert url in msg and str(tmp_path / "toy" / "raw" / "screen.h5ad") in msg and "\n" not in msg
    assert not list((tmp_path / "toy" / "raw").glob("*")) if (tmp_path / "toy" / "raw").exists() else True


def test_download_verifies_checksum_and_size(tmp_path):
    src = tmp_path / "remote.h5ad"
    ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(src)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()

    def recipe(**kw):
        f = RemoteFile("screen.h5ad", src.as_uri(), **kw)
        return Recipe(name="toy", description="", page="", files=(f,), screen_fname="screen.h5ad",
                      columns=RECIPES["vcc25_h1"].columns, expect="counts", n_hvg=0)

    with pytest.raises(InputError, match="md5 .* does not match the published 0000"):
        fetch_recipe(recipe(md5="0" * 32), tmp_path / "a")
    assert not list((tmp_path / "a" / "toy" / "raw").iterdir())  # nothing half-written left behind
    assert "checksum verified" in fetch_recipe(recipe(md5=md5), tmp_path / "b")[0]
    assert (tmp_path / "b" / "toy" / "raw" / "screen.h5ad").read_bytes() == src.read_bytes()
    assert "already in place; checksum verified" in fetch_recipe(recipe(md5=md5), tmp_path / "b")[0]
    with pytest.raises(InputError, match=r"size \d+ bytes, expected 5"):
        fetch_recipe(recipe(size_bytes=5), tmp_path / "b")
    # No published size or checksum: a truncated .h5ad already in place is still refused (it does not open).
    in_place = tmp_path / "b" / "toy" / "raw" / "screen.h5ad"
    in_place.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(InputError, match="screen.h5ad: not a readable .h5ad file .*; delete it and fetch again"):
        fetch_recipe(recipe(), tmp_path / "b")


def test_subsample_rows_caps_each_group():
    rng = np.random.default_rng(3)
    obs = pd.DataFrame({schema.CONTEXT_COL: rng.choice(["a", "b"], 500), schema.PERT_COL: rng.choice(list("wxyz"), 500)})
    keep = subsample_rows(obs, 7, seed=0)
    sizes = obs.groupby([schema.CONTEXT_COL, schema.PERT_COL]).size()
    kept = obs.iloc[keep].groupby([schema.CONTEXT_COL, schema.PERT_COL]).size()
    pd.testing.assert_series_equal(kept, sizes.clip(upper=7))
    assert np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(keep, subsample_rows(obs, 7, seed=0))
    assert not np.array_equal(keep, subsample_rows(obs, 7, seed=1))
