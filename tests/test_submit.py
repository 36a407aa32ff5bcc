"""`biojepac submit` packages exactly what cell-eval 0.8.2's `prep` produces and passes its checks."""

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
