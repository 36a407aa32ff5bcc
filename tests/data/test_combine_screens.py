"""`data.combine` against a direct in-memory construction: genes matched across identifier styles, missing
genes masked, every dataset at the same normalisation (from counts, or rescaled from a known log1p total),
labels prefixed, provenance recorded; refusals as one line. Synthetic (runs everywhere) and on the shared
Norman19 + McFaline23 fixture (skipped without ../shared)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.cli import main
from biojepac.data import schema
from biojepac.data.combine import CombineConfig, combine_screens, gene_masks
from biojepac.data.normalize import normalize_log1p
from biojepac.errors import InputError

N_GENES = 40
SYMS = [f"G{i:03d}" for i in range(N_GENES)]
ENS = [f"ENSG{i:011d}" for i in range(N_GENES)]


@pytest.fixture
def table_fpath(tmp_path):
    """A tiny symbol table: G005 was called OLD5; AMB is an alias of both G006 and G007."""
    rows = ["symbol\tentrez_id\tgene_type\tensembl_ids\taliases\tname"]
    for i, s in enumerate(SYMS):
        aliases = {5: "OLD5", 6: "AMB", 7: "AMB"}.get(i, "")
        rows.append(f"{s}\t{i}\tprotein-coding\t{ENS[i]}\t{aliases}\t{s}")
    fpath = tmp_path / "ids.tsv"
    fpath.write_text("\n".join(rows) + "\n")
    return fpath


def _counts_screen(rng, genes, n_cells, perts, ctx, dense=False):
    rate = rng.gamma(2.0, 2.0, size=len(genes))
    x = rng.poisson(rate, size=(n_cells, len(genes))).astype(np.float32)
    labels = np.resize(["non-targeting", *perts], n_cells)
    obs = pd.DataFrame({"target_gene": labels, "context": ctx, "batch": np.resize(["1", "2"], n_cells),
                        "pert_type": "CRISPRi"}, index=[f"AAAC-{i}" for i in range(n_cells)])  # same barcodes in every file
    return ad.AnnData(x if dense else sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture
def three_screens(tmp_path):
    """A: counts, symbols with an old and an ambiguous name. B: dense counts, versioned Ensembl IDs and an
    unknown gene. C: log1p normalised to 5,000 (no counts)."""
    rng = np.random.default_rng(0)
    a_genes = SYMS[:30]
    a_genes[5], a_genes[6] = "OLD5", "AMB"
    a = _counts_screen(rng, a_genes, 120, ["OLD5", "G001"], "K562")
    b = _counts_screen(rng, [f"{e}.3" for e in ENS[10:]] + ["WEIRD1"], 90, ["G012"], "RPE1", dense=True)
    c_counts = _counts_screen(rng, SYMS[:20], 60, ["G001"], "HepG2")
    c = normalize_log1p(c_counts, target=5000.0)
    del c.layers["counts"]
    c.uns = {}
    paths = {}
    for name, adata in (("A", a), ("B", b), ("C", c)):
        paths[name] = tmp_path / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    return paths, {"A": a, "B": b, "C": c_counts}


def _direct(raw: dict, keys_per: dict, gene_order: list[str], target=1e4) -> np.ndarray:
    """The combined matrix built in memory: scanpy normalisation per dataset, columns placed by key."""
    rows = []
    for name, adata in raw.items():
        norm = normalize_log1p(adata, target=target).X
        norm = norm.toarray() if sp.issparse(norm) else np.asarray(norm)
        out = np.zeros((adata.n_obs, len(gene_order)), np.float32)
        pos = {g: j for j, g in enumerate(gene_order)}
        for j, k in enumerate(keys_per[name]):
            if k in pos:
                out[:, pos[k]] = norm[:, j]
        rows.append(out)
    return np.concatenate(rows)


def test_union_matches_direct_construction(three_screens, table_fpath, tmp_path):
    paths, raw = three_screens
    out = tmp_path / "combined.h5ad"
    summary = combine_screens(CombineConfig(screens=tuple(f"{k}={v}" for k, v in paths.items()), out=out,
                                            log1p_targets=("C=5000",), symbols=str(table_fpath), chunk_rows=32))
    comb = ad.read_h5ad(out)
    keys = {"A": SYMS[:5] + ["G005", "AMB"] + SYMS[7:30], "B": SYMS[10:] + ["WEIRD1"], "C": SYMS[:20]}
    order = list(dict.fromkeys(keys["A"] + keys["B"] + keys["C"]))
    assert list(comb.var_names) == order
    np.testing.assert_allclose(comb.X.toarray(), _direct(raw, keys, order), rtol=2e-6, atol=2e-6)

    codes, masks = gene_masks(comb.obs, comb.var)
    for d, name in enumerate(("A", "B", "C")):
        want = np.isin(order, keys[name])
        np.testing.assert_array_equal(comb.var[f"measured:{name}"].to_numpy(), want)
        np.testing.assert_array_equal(masks[d], want)
        assert (codes[(comb.obs["dataset"] == name).to_numpy()] == d).all()
    assert comb.var.loc["G006", "n_datasets"] == 1 and comb.var.loc["G012", "n_datasets"] == 3 and comb.var.loc["AMB", "n_datasets"] == 1

    obs = comb.obs
    assert obs.index.is_unique and obs.index[0] == "A:AAAC-0"
    assert set(obs[schema.CONTEXT_COL]) == {"A:K562", "B:RPE1", "C:HepG2"}
    assert set(obs[schema.BATCH_COL]) == {f"{d}:{b}" for d in "ABC" for b in "12"}
    assert "G005" in set(obs[schema.PERT_COL]) and "OLD5" not in set(obs[schema.PERT_COL])  # labels matched too
    np.testing.assert_allclose(obs["total_counts"][:120], np.asarray(raw["A"].X.sum(1)).ravel())

    rec = comb.uns[schema.UNS_KEY]["combine"]["sources"]
    assert rec["A"]["gene_map"]["ambiguous"] == {"AMB": "G006,G007"} and rec["A"]["gene_map"]["renamed"] == {"OLD5": "G005"}
    assert list(rec["B"]["gene_map"]["unknown"]) == ["WEIRD1"] and rec["B"]["gene_map"]["n_renamed"] == 30
    assert rec["C"]["values"] == "log1p" and "5000" in rec["C"]["normalisation"]
    assert rec["B"]["values"] == "counts" and len(rec["B"]["sha256"]) == 64
    assert summary["n_cells"] == 270 and summary["n_genes"] == len(order)
    # The output reads as a training screen (validated, log1p) and the inputs are untouched.
    from biojepac.data.load import read_training_screen

    assert read_training_screen(out).uns[schema.UNS_KEY]["values"] == "log1p"
    np.testing.assert_array_equal(ad.read_h5ad(paths["A"]).X.toarray(), raw["A"].X.toarray())


def test_intersection_list_and_cli(three_screens, table_fpath, tmp_path, capsys):
    paths, raw = three_screens
    screens = ("A=" + str(paths["A"]), "B=" + str(paths["B"]))
    out = tmp_path / "inter.h5ad"
    assert main(["data", "combine", "--screens", *screens, "--out", str(out), "--gene-space", "intersection",
                 "--symbols", str(table_fpath), "--no-checksum"]) == 0
    printed = capsys.readouterr().out
    assert "1 ambiguous" in printed and "1 unmatched" in printed and "wrote" in printed
    comb = ad.read_h5ad(out)
    assert list(comb.var_names) == SYMS[10:30]
    assert comb.var["measured:A"].all() and comb.var["measured:B"].all()

    # A list in another identifier style (versioned Ensembl IDs): its names and order are the output's.
    listed = [f"{ENS[i]}.7" for i in (35, 3, 12, 5)] + ["NOPE"]
    (tmp_path / "genes.csv").write_text("gene_id\n" + "\n".join(listed) + "\n")
    out2 = tmp_path / "listed.h5ad"
    combine_screens(CombineConfig(screens=screens, out=out2, gene_space=f"list:{tmp_path / 'genes.csv'}",
                                  symbols=str(table_fpath), checksum=False))
    comb = ad.read_h5ad(out2)
    assert list(comb.var_names) == listed and list(comb.var["symbol"]) == ["G035", "G003", "G012", "G005", "NOPE"]
    np.testing.assert_array_equal(comb.var["measured:A"], [False, True, True, True, False])
    np.testing.assert_array_equal(comb.var["measured:B"], [True, False, True, False, False])
    keys = {"A": SYMS[:5] + ["G005", "AMB"] + SYMS[7:30], "B": SYMS[10:] + ["WEIRD1"]}
    want = _direct({k: raw[k] for k in "AB"}, keys, ["G035", "G003", "G012", "G005", "NOPE"])
    np.testing.assert_allclose(comb.X.toarray(), want, rtol=2e-6, atol=2e-6)


def test_shards_hold_the_single_files_rows_and_stream_as_one(three_screens, table_fpath, tmp_path, capsys):
    """`--shard-cells`: a folder of shards, none mixing datasets, whose rows, obs, var and masks concatenate to the
    one-file output; the stream loader reads the folder as those shards."""
    from biojepac.data.stream import CellStream, StreamConfig

    paths, _ = three_screens
    screens = tuple(f"{k}={v}" for k, v in paths.items())
    kw = dict(screens=screens, log1p_targets=("C=5000",), symbols=str(table_fpath), chunk_rows=32, checksum=False)
    combine_screens(CombineConfig(out=tmp_path / "one.h5ad", **kw))
    dpath = tmp_path / "shards"
    assert main(["data", "combine", "--screens", *screens, "--log1p-targets", "C=5000", "--symbols", str(table_fpath),
                 "--chunk-rows", "32", "--no-checksum", "--out", str(dpath), "--shard-cells", "50"]) == 0
    assert "in 7 shards" in capsys.readouterr().out
    files = sorted(dpath.glob("*.h5ad"))
    assert [f.name for f in files] == [f"shard-{i:05d}.h5ad" for i in range(7)]  # A 120 -> 50+50+20, B 90 -> 50+40, C 60 -> 50+10
    parts = [ad.read_h5ad(f) for f in files]
    assert [p.n_obs for p in parts] == [50, 50, 20, 50, 40, 50, 10]
    assert all(p.obs["dataset"].nunique() == 1 for p in parts)
    one = ad.read_h5ad(tmp_path / "one.h5ad")
    joined = ad.concat(parts, merge="same")
    np.testing.assert_array_equal(joined.X.toarray(), one.X.toarray())
    assert list(joined.obs_names) == list(one.obs_names)
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL, "dataset"):
        assert list(joined.obs[col].astype(str)) == list(one.obs[col].astype(str))
    for p in parts:
        pd.testing.assert_frame_equal(p.var, one.var)
        assert list(p.uns[schema.UNS_KEY]["combine"]["datasets"]) == ["A", "B", "C"]
    stream = CellStream(StreamConfig(shard_fpaths=(str(dpath),), kind="cells", cell_repr="dense", batch_size=270, block_rows=16))
    assert stream.n_rows == 270 and len(stream.shards) == 7
    b = stream.next_batch()
    codes, masks = gene_masks(one.obs, one.var)
    np.testing.assert_array_equal(b["x"], one.X.toarray()[b["row"]])
    np.testing.assert_array_equal(b["gene_mask"], masks[codes[b["row"]]])
    with pytest.raises(InputError, match="is a file"):
        combine_screens(CombineConfig(out=tmp_path / "one.h5ad", shard_cells=10, **kw))
    # Written again, the earlier shard output is replaced whole (A 120 -> 100+20, B 90, C 60).
    assert main(["data", "combine", "--screens", *screens, "--log1p-targets", "C=5000", "--symbols", str(table_fpath),
                 "--no-checksum", "--out", str(dpath), "--shard-cells", "100"]) == 0
    assert [ad.read_h5ad(f).n_obs for f in sorted(dpath.glob("*.h5ad"))] == [100, 20, 90, 60]


def test_hvg_ranks_across_datasets_as_scanpy_batch_key(tmp_path, table_fpath):
    """Same genes in every dataset: our streamed ranking equals scanpy's highly_variable_genes(batch_key)."""
    import scanpy as sc

    rng = np.random.default_rng(3)
    raw = {n: _counts_screen(rng, SYMS, 150, ["G001"], n) for n in ("X1", "X2", "X3")}
    paths = []
    for n, a in raw.items():
        a.write_h5ad(tmp_path / f"{n}.h5ad")
        paths.append(f"{n}={tmp_path / n}.h5ad")
    out = tmp_path / "hvg.h5ad"
    combine_screens(CombineConfig(screens=tuple(paths), out=out, gene_space="hvg:12", symbols=str(table_fpath), checksum=False))
    both = ad.concat([normalize_log1p(a, target=1e4) for a in raw.values()], label="dataset", keys=list(raw), index_unique=":")
    hv = sc.pp.highly_variable_genes(both, n_top_genes=12, batch_key="dataset", flavor="seurat", inplace=False)
    assert list(ad.read_h5ad(out).var_names) == list(both.var_names[hv["highly_variable"].to_numpy()])


def test_refusals_are_one_line(three_screens, table_fpath, tmp_path):
    paths, _ = three_screens
    run = lambda **kw: combine_screens(CombineConfig(out=tmp_path / "o.h5ad", symbols=str(table_fpath), checksum=False, **kw))
    with pytest.raises(InputError, match=r"C.h5ad: X holds log1p values normalised to an unknown total.*--log1p-targets"):
        run(screens=(f"A={paths['A']}", f"C={paths['C']}"))
    with pytest.raises(InputError, match="holds raw counts.*does not apply"):
        run(screens=(f"A={paths['A']}",), log1p_targets=("A=1e4",))
    with pytest.raises(InputError, match="may not contain ':'"):
        run(screens=(f"a:b={paths['A']}",))
    with pytest.raises(InputError, match="use union, intersection"):
        run(screens=(f"A={paths['A']}",), gene_space="hvg:x")
    bad = ad.read_h5ad(paths["A"])
    bad.X = bad.X.toarray()
    bad.X[3, 2] = -1
    bad.write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(InputError, match=r"value -1 at cell 'AAAC-3', gene 'G002'"):
        run(screens=(f"N={tmp_path / 'neg.h5ad'}",))
    assert not (tmp_path / "o.h5ad").exists()


def test_real_fixture_two_datasets_in_other_styles(shared_data_dpath, tmp_path):
    """The fixture's Norman19 (K562, log1p) and McFaline23 (three lines) as separate screens, plus a copy of
    Norman with Ensembl IDs (versions added) and a copy of McFaline as raw counts; checked against a direct
    construction with the packaged symbol table."""
    from biojepac.data.genes import load_symbols
    from biojepac.data.recipes import load_norman_mcfaline

    full = load_norman_mcfaline(shared_data_dpath / "norman19_mcfaline23_devel.h5ad")
    full.uns = {}
    norman = full[(full.obs["dataset"] == "norman19").to_numpy(), :400].copy()
    mcf = full[(full.obs["dataset"] == "mcfaline23").to_numpy(), 100:].copy()
    # Ensembl copy of Norman: genes with exactly one Ensembl ID renamed to it (with a version); others kept.
    table = load_symbols()
    ens_of = {}
    for e, syms in table.ensembl.items():
        if len(syms) == 1:
            ens_of.setdefault(syms[0], []).append(e)
    ens_names = [f"{ens_of[g][0]}.12" if len(ens_of.get(g, [])) == 1 else g for g in norman.var_names]
    norman_ens = norman.copy()
    norman_ens.var_names = ens_names
    # Raw-count copy of McFaline: expm1 of the log1p values over each cell's smallest value (one UMI).
    x = mcf.X.tocsr().astype(np.float64)
    x.data = np.expm1(x.data)
    one_umi = np.maximum.reduceat(1 / x.data, x.indptr[:-1])
    x = sp.diags(1 / one_umi) @ x
    x.data = np.round(x.data)
    mcf_counts = mcf.copy()
    mcf_counts.X = x.astype(np.float32).tocsr()
    files = {"norman": norman, "norman_ens": norman_ens, "mcfaline": mcf, "mcfaline_counts": mcf_counts}
    for name, a in files.items():
        a.write_h5ad(tmp_path / f"{name}.h5ad")
    out = tmp_path / "combined.h5ad"
    combine_screens(CombineConfig(screens=tuple(f"{n}={tmp_path / n}.h5ad" for n in files), out=out,
                                  log1p_targets=("norman=1e4", "norman_ens=1e4", "mcfaline=1e4"), checksum=False))
    comb = ad.read_h5ad(out)
    genes = list(full.var_names)
    n_ens = sum(e != g for e, g in zip(ens_names, norman.var_names))
    assert n_ens > 300  # most of the fixture's genes have one Ensembl ID
    assert list(comb.var_names) == genes[:400] + genes[400:]  # Ensembl names matched back onto Norman's symbols
    np.testing.assert_array_equal(comb.var["measured:norman_ens"], comb.var["measured:norman"])
    np.testing.assert_array_equal(comb.var["measured:norman"], np.arange(500) < 400)
    np.testing.assert_array_equal(comb.var["measured:mcfaline_counts"], np.arange(500) >= 100)

    # Values: log1p inputs at target 1e4 unchanged; the counts copy normalised as scanpy does.
    direct = np.zeros((comb.n_obs, 500), np.float32)
    r = 0
    for name, a in files.items():
        cols = np.arange(400) if name.startswith("norman") else np.arange(100, 500)
        vals = normalize_log1p(a, target=1e4).X if name == "mcfaline_counts" else a.X
        direct[r : r + a.n_obs, cols] = vals.toarray()
        r += a.n_obs
    np.testing.assert_allclose(comb.X.toarray(), direct, rtol=1e-6, atol=1e-6)
    assert set(comb.obs[schema.CONTEXT_COL]) == {"norman:k562", "norman_ens:k562", *(f"{d}:{c}" for d in ("mcfaline", "mcfaline_counts")
                                                                                      for c in ("A172", "T98G", "U87MG"))}
    is_norman = comb.obs["dataset"].astype(str).str.startswith("norman").to_numpy()
    assert set(comb.obs[schema.PERT_TYPE_COL][is_norman]) == {"CRISPRa"} and set(comb.obs[schema.PERT_TYPE_COL][~is_norman]) == {"CRISPRi"}
    rec = comb.uns[schema.UNS_KEY]["combine"]["sources"]
    assert rec["norman_ens"]["gene_map"]["n_renamed"] == n_ens and rec["mcfaline_counts"]["values"] == "counts"
