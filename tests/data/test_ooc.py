"""Out-of-core preparation equals the in-memory path (normalize_log1p + select_hvg + pseudobulk)."""

import anndata as ad
import numpy as np
import pytest

from biojepac.data import normalize, ooc, pairing
from biojepac.data.stream import CellStream, StreamConfig
from biojepac.errors import InputError
from random_screen import build_random_screen


@pytest.fixture(scope="module")
def screen_fpath(tmp_path_factory):
    screen = build_random_screen(n_cells=700, n_genes=120, n_perts=6, contexts=("a", "b"), seed=3)
    x = screen.X.toarray()
    rng = np.random.default_rng(0)
    x *= rng.random(x.shape) < 0.4  # sparse, with over-dispersed genes so HVGs are well separated
    x[:, :20] *= rng.poisson(3.0, size=(x.shape[0], 20))
    x[5] = 0  # an empty cell
    screen.X = type(screen.X)(x)
    fpath = tmp_path_factory.mktemp("ooc") / "screen.h5ad"
    screen.write_h5ad(fpath)
    return fpath


@pytest.mark.parametrize("flavor,target", [("seurat", "median"), ("cell_ranger", 1e4)])
def test_out_of_core_equals_in_memory(screen_fpath, tmp_path, flavor, target):
    cfg = ooc.OocConfig(target=target, n_top_genes=30, hvg_flavor=flavor, chunk_rows=128, out_chunk_nnz=1000)
    dst = tmp_path / "prepared.h5ad"
    summary = ooc.prepare_out_of_core(screen_fpath, dst, cfg)
    assert summary["n_genes_out"] == 30

    mem = normalize.select_hvg(normalize.normalize_log1p(ad.read_h5ad(screen_fpath), target=target), 30, flavor)
    got = ad.read_h5ad(dst)
    assert list(got.var_names) == list(mem.var_names), "identical HVG set, in the original gene order"
    np.testing.assert_allclose(got.X.toarray(), mem.X.toarray(), rtol=2e-6, atol=1e-6)
    assert got.uns["biojepac"]["transform"]["target_sum"] == pytest.approx(mem.uns["biojepac"]["transform"]["target_sum"])
    np.testing.assert_array_equal(got.obs_names, mem.obs_names)

    groups, means = pairing.pseudobulk(mem)
    pb = got.uns["pseudobulk"]
    np.testing.assert_array_equal(pb["groups"][["context", "target_gene"]].to_numpy(), groups[["context", "target_gene"]].to_numpy())
    np.testing.assert_array_equal(pb["groups"]["n_cells"].to_numpy(), groups["n_cells"].to_numpy())
    np.testing.assert_allclose(pb["means"], means, rtol=1e-6, atol=1e-7)


def test_prepared_store_streams(screen_fpath, tmp_path):
    dst = tmp_path / "prepared.h5ad"
    ooc.prepare_out_of_core(screen_fpath, dst, ooc.OocConfig(n_top_genes=0, chunk_rows=200))
    s = CellStream(StreamConfig(shard_fpaths=(str(dst),), kind="pairs", cell_repr="dense", batch_size=20, block_rows=64))
    b = s.next_batch()
    full = ad.read_h5ad(dst)
    np.testing.assert_array_equal(b["pert_x"][3], full.X[b["pert_row"][3]].toarray().ravel())
    assert full.n_vars == 120 and (full.obs["total_counts"].iloc[5] == 0)


def test_gene_harmonisation_matches_in_memory(screen_fpath, tmp_path):
    from biojepac.data.genes import SymbolTable, harmonize_genes, harmonize_labels

    table_fpath = tmp_path / "genes.tsv"
    rows = ["symbol\tentrez_id\tgene_type\tensembl_ids\taliases\tname"]
    rows += [f"NEW{i}\t{i}\tprotein\tENSG{i:011d}\tG{i:03d}\tx" for i in range(0, 120, 2)]  # even genes renamed
    rows += [f"G{i:03d}\t{1000 + i}\tprotein\t\t\tx" for i in range(1, 120, 2)]
    table_fpath.write_text("\n".join(rows) + "\n")
    dst = tmp_path / "harm.h5ad"
    ooc.prepare_out_of_core(screen_fpath, dst, ooc.OocConfig(n_top_genes=0, symbols=str(table_fpath), chunk_rows=256))
    got = ad.read_h5ad(dst)
    mem, _ = harmonize_genes(ad.read_h5ad(screen_fpath), SymbolTable.load(table_fpath))
    labels, _ = harmonize_labels(mem.obs["target_gene"], SymbolTable.load(table_fpath))
    assert list(got.var_names) == list(mem.var_names) and got.var_names[0] == "NEW0" and got.var_names[1] == "G001"
    assert list(got.obs["target_gene"]) == labels
    assert got.uns["biojepac"]["gene_map"] and got.uns["biojepac"]["label_map"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_nan_inf_and_negative_values_are_refused_naming_cell_and_gene(tmp_path, bad):
    screen = build_random_screen(n_cells=500, n_genes=30, seed=4)
    x = screen.X.toarray()
    x[450, 7] = bad
    screen.X = type(screen.X)(x)
    src, dst = tmp_path / "screen.h5ad", tmp_path / "out.h5ad"
    screen.write_h5ad(src)
    with pytest.raises(InputError, match=rf"screen.h5ad: .*value {bad:g} at cell 'cell450', gene 'G007'"):
        ooc.prepare_out_of_core(src, dst, ooc.OocConfig(n_top_genes=0, chunk_rows=200))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["screen.h5ad"]  # no output, no temporary file


def test_a_killed_runs_temporary_file_is_removed_by_the_next_run(screen_fpath, tmp_path):
    from test_io import dead_pid

    stale = tmp_path / f".out.h5ad.tmp{dead_pid()}.h5ad"
    stale.write_text("half a file")
    ooc.prepare_out_of_core(screen_fpath, tmp_path / "out.h5ad", ooc.OocConfig(n_top_genes=0, chunk_rows=256))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]
