"""`biojepac submit` packages exactly what cell-eval 0.8.2's `prep` produces and passes its checks."""

import dataclasses
import subprocess
import tarfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.submit import SubmitConfig, run_submit
from random_screen import build_random_screen

prep = pytest.importorskip("cell_eval._cli._prep")
from cell_eval.utils import guess_is_lognorm  # noqa: E402


def unpack(vcc_fpath, dpath) -> tuple[ad.AnnData, dict[str, bytes]]:
    with tarfile.open(vcc_fpath) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    (dpath / "pred.h5ad.zst").write_bytes(members["pred.h5ad.zst"])
    subprocess.run(["zstd", "-d", "-q", "-f", str(dpath / "pred.h5ad.zst"), "-o", str(dpath / "pred.h5ad")], check=True)
    return ad.read_h5ad(dpath / "pred.h5ad"), members


def make_pred(tmp_path, counts: bool, dense: bool = False):
    pred = build_random_screen(n_cells=120, n_genes=25, counts=counts, seed=4)
    genes = list(pred.var_names)
    shuffled = pred[:, np.random.default_rng(0).permutation(pred.n_vars)].copy()  # stored out of order
    if dense:
        shuffled.X = shuffled.X.toarray()
    shuffled.write_h5ad(tmp_path / "pred.h5ad")
    pd.Series(genes).to_csv(tmp_path / "genes.csv", index=False, header=False)
    return shuffled, genes


@pytest.mark.parametrize("counts,dense", [(False, False), (True, False), (False, True)])
def test_same_package_as_cell_eval_prep(tmp_path, counts, dense):
    pred, genes = make_pred(tmp_path, counts, dense)
    ours_dpath, theirs_dpath = tmp_path / "ours", tmp_path / "theirs"
    ours_dpath.mkdir(), theirs_dpath.mkdir()
    run_submit(SubmitConfig(pred=tmp_path / "pred.h5ad", genes=tmp_path / "genes.csv", out=tmp_path / "ours.vcc",
                            block_rows=17))  # several blocks
    prep.strip_anndata(ad.read_h5ad(tmp_path / "pred.h5ad"), output_path=str(tmp_path / "theirs.vcc"),
                       genelist=genes, encoding=32)
    ours, our_members = unpack(tmp_path / "ours.vcc", ours_dpath)
    theirs, their_members = unpack(tmp_path / "theirs.vcc", theirs_dpath)
    assert sorted(our_members) == sorted(their_members) == ["pred.h5ad.zst", "watermark.txt"]
    assert our_members["watermark.txt"] == their_members["watermark.txt"] == b"vcc-prep"
    assert list(ours.var_names) == list(theirs.var_names) == genes
    pd.testing.assert_frame_equal(ours.obs, theirs.obs)
    assert sp.isspmatrix_csr(ours.X) and ours.X.dtype == theirs.X.dtype == np.float32
    np.testing.assert_allclose(ours.X.toarray(), theirs.X.toarray(), rtol=1e-6, atol=1e-6)
    # And our package passes cell-eval's own checks: lognorm guess and a second prep run on it.
    assert guess_is_lognorm(ours)
    prep.strip_anndata(ours, output_path=str(tmp_path / "again.vcc"), genelist=genes)


def test_validation_errors(tmp_path):
    pred, genes = make_pred(tmp_path, counts=False)
    base = dict(pred=tmp_path / "pred.h5ad", out=tmp_path / "x.vcc")
    pd.Series(genes[:-1] + ["NOTAGENE"]).to_csv(tmp_path / "bad_genes.csv", index=False, header=False)
    with pytest.raises(InputError, match="NOTAGENE"):
        run_submit(SubmitConfig(genes=tmp_path / "bad_genes.csv", **base))
    with pytest.raises(InputError, match="exceed"):
        run_submit(SubmitConfig(genes=tmp_path / "genes.csv", max_cell_dim=50, **base))
    with pytest.raises(InputError, match="'ctrl'"):
        run_submit(SubmitConfig(genes=tmp_path / "genes.csv", control="ctrl", **base))
    big = pred.copy()
    big.X = big.X.toarray() * 20.0 + 0.5  # decimals above the log1p range
    big.write_h5ad(tmp_path / "big.h5ad")
    with pytest.raises(InputError, match="not log1p"):
        run_submit(SubmitConfig(pred=tmp_path / "big.h5ad", genes=tmp_path / "genes.csv", out=tmp_path / "x.vcc"))
    assert not (tmp_path / "x.vcc").exists()


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path):
    from test_io import dead_pid

    _, genes = make_pred(tmp_path, counts=False)
    stale = tmp_path / f".sub.vcc.tmp{dead_pid()}-abc"
    stale.mkdir()
    (stale / "pred.h5ad").write_text("half")
    run_submit(SubmitConfig(pred=tmp_path / "pred.h5ad", genes=tmp_path / "genes.csv", out=tmp_path / "sub.vcc"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def _counts_pred(tmp_path, x, labels, genes):
    a = ad.AnnData(sp.csr_matrix(np.asarray(x, np.float32)), obs=pd.DataFrame({"target_gene": labels}),
                   var=pd.DataFrame(index=genes))
    a.write_h5ad(tmp_path / "pred.h5ad")
    pd.Series(genes).to_csv(tmp_path / "genes.csv", index=False, header=False)
    return tmp_path / "pred.h5ad"


def test_vcc2026_submission_is_validated_as_cell_eval2_does(tmp_path):
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(12)]
    labels = ["non-targeting"] * 6 + ["G1"] * 5 + ["G2"] * 5
    x = rng.poisson(3.0, (16, 12)).astype(float)
    x[0, 0] += 5e-7  # float dust within cell-eval2's 1e-6 tolerance: accepted, kept as stored
    pred = _counts_pred(tmp_path, x, labels, genes[::-1])  # genes in another order: reordered
    pd.DataFrame({"target_gene": ["G1", "G2"]}).to_csv(tmp_path / "req.csv", index=False)
    pd.Series(genes).to_csv(tmp_path / "genes.csv", index=False, header=False)
    cfg = SubmitConfig(pred=pred, genes=tmp_path / "genes.csv", out=tmp_path / "sub.h5ad", format="vcc2026",
                       requests=tmp_path / "req.csv", encoding=64)
    run_submit(cfg)
    out = ad.read_h5ad(tmp_path / "sub.h5ad")
    assert list(out.var_names) == genes and list(out.obs["target_gene"]) == labels
    np.testing.assert_array_equal(out.X.toarray(), x.astype(np.float32)[:, ::-1])  # reordered to the list
    bad = x.copy()
    bad[3, 4] = 2.5
    with pytest.raises(InputError, match="cell 3.*raw"):
        run_submit(dataclasses.replace(cfg, pred=_counts_pred(tmp_path, bad, labels, genes)))
    big = x.copy()
    big[7, 0] = 2e6
    with pytest.raises(InputError, match="cell 7 totals"):
        run_submit(dataclasses.replace(cfg, pred=_counts_pred(tmp_path, big, labels, genes)))
    with pytest.raises(InputError, match="missing \\['G2'\\]"):
        run_submit(dataclasses.replace(cfg, pred=_counts_pred(tmp_path, x, labels[:11] + ["G3"] * 5, genes)))
