"""read_h5ad_parts: the h5py fast path and the anndata fallback give what anndata.read_h5ad gives."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.eval import h5read
from biojepac.eval.h5read import anndata_parts, read_h5ad_parts


@pytest.fixture
def fallback_calls(monkeypatch):
    calls = []
    real = h5read._read_with_anndata

    def spy(fpath, pert_col):
        calls.append(fpath)
        return real(fpath, pert_col)

    monkeypatch.setattr(h5read, "_read_with_anndata", spy)
    return calls


def make_adata(X, obs=None):
    n, g = X.shape
    obs = obs if obs is not None else pd.DataFrame({"pert": pd.Categorical(["a", "b", "c"] * (n // 3) + ["a"] * (n % 3))})
    obs.index = [f"c{i}" for i in range(n)]
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(g)]))


def check_same(path, col):
    labels, genes, X = read_h5ad_parts(path, col)
    ref = ad.read_h5ad(path)
    np.testing.assert_array_equal(labels, ref.obs[col].astype(str).to_numpy())
    np.testing.assert_array_equal(genes, np.asarray(ref.var_names.astype(str)))
    assert type(X) is type(ref.X) and X.dtype == ref.X.dtype and X.shape == ref.X.shape
    if sp.issparse(X):
        assert X.format == ref.X.format and (X != ref.X).nnz == 0
    else:
        np.testing.assert_array_equal(X, ref.X)


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_matrix_formats_match_anndata(tmp_path, fmt, compression, fallback_calls):
    dense = np.random.default_rng(0).poisson(0.7, size=(9, 6)).astype(np.float32)
    X = dense if fmt == "dense" else sp.csr_matrix(dense) if fmt == "csr" else sp.csc_matrix(dense)
    path = tmp_path / "x.h5ad"
    make_adata(X).write_h5ad(path, compression=compression)
    check_same(path, "pert")
    assert fallback_calls == []


@pytest.mark.parametrize(
    "column, fast",
    [
        (pd.Categorical(["a", "c", "b", "a", "c", "b"]), True),
        (pd.Series(["u", "v", "w", "x", "y", "z"], dtype=object), True),  # unique: stays a string array
        (pd.Series([3, 1, 2, 3, 1, 2], dtype=np.int64), True),
        (pd.array([1, 3, 2, 1, 3, 2], dtype="Int64"), False),
        (pd.array([True, True, False, True, True, False], dtype="boolean"), False),
    ],
    ids=["categorical", "object_str", "int", "nullable_int", "nullable_bool"],
)
def test_obs_column_kinds(tmp_path, column, fast, fallback_calls):
    path = tmp_path / "x.h5ad"
    make_adata(np.ones((6, 3), np.float32), pd.DataFrame({"pert": column})).write_h5ad(path)
    check_same(path, "pert")
    assert (fallback_calls == []) is fast
    if isinstance(column, pd.Categorical):
        assert list(read_h5ad_parts(path, "pert")[0]) == ["a", "c", "b", "a", "c", "b"]


def test_missing_labels_are_refused_by_both_readers(tmp_path):
    """A NaN perturbation label is no perturbation: refused (it used to be read as a group named 'nan')."""
    path = tmp_path / "x.h5ad"
    obs = pd.DataFrame({"pert": pd.Categorical(["a", None, "b", "a", None, "b"])})
    make_adata(np.ones((6, 3), np.float32), obs).write_h5ad(path)
    for read in (lambda: read_h5ad_parts(path, "pert"), lambda: anndata_parts(ad.read_h5ad(path), str(path), "pert")):
        with pytest.raises(InputError, match="'pert' is empty") as e:
            read()
        assert str(path) in str(e.value)


def test_missing_obs_column(tmp_path):
    path = tmp_path / "x.h5ad"
    make_adata(np.ones((3, 2), np.float32)).write_h5ad(path)
    with pytest.raises(InputError) as e:
        read_h5ad_parts(path, "no_such_col")
    assert str(path) in str(e.value) and "no_such_col" in str(e.value) and "\n" not in str(e.value)


def test_not_hdf5(tmp_path):
    path = tmp_path / "bad.h5ad"
    path.write_bytes(b"this is not an hdf5 file\n" * 10)
    with pytest.raises(InputError, match="bad.h5ad") as e:
        read_h5ad_parts(path, "pert")
    assert str(path) in str(e.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.h5ad"
    with pytest.raises(InputError, match="absent.h5ad"):
        read_h5ad_parts(path, "pert")


def test_input_not_modified(tmp_path):
    path = tmp_path / "x.h5ad"
    make_adata(sp.csr_matrix(np.eye(6, 4, dtype=np.float32))).write_h5ad(path)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    read_h5ad_parts(path, "pert")
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_large_csr_chunked_fast_path(tmp_path, fallback_calls):
    X = sp.random(3000, 200, density=0.2, format="csr", dtype=np.float32, random_state=1)
    path = tmp_path / "big.h5ad"
    make_adata(X).write_h5ad(path)
    with h5read.h5py.File(path, "r") as f:
        data = f["X"]["data"]
        assert data.compression is None and data.chunks is not None and data.chunks[0] < data.shape[0]
    check_same(path, "pert")
    assert fallback_calls == [] and (read_h5ad_parts(path, "pert")[2] != X).nnz == 0


@pytest.mark.parametrize("max_iov, max_gap", [(1024, 1 << 16), (3, 1 << 16), (1024, 0)])
def test_chunks_out_of_order_with_gaps(tmp_path, monkeypatch, max_iov, max_gap):
    """Chunks written last-first, with other datasets between them: scattered reads across the gaps,
    split into several calls, or one chunk at a time, all give h5py's values."""
    import h5py

    monkeypatch.setattr(h5read, "MAX_IOV", max_iov)
    monkeypatch.setattr(h5read, "MAX_GAP", max_gap)
    values = np.random.default_rng(1).random(103).astype(np.float32)
    path = tmp_path / "chunks.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=values.shape, dtype=values.dtype, chunks=(10,))
        for k, lo in enumerate(range(100, -1, -10)):
            ds[lo : lo + 10] = values[lo : lo + 10]
            f.create_dataset(f"filler{k}", data=np.arange(k + 50))
    with h5py.File(path, "r") as f, open(path, "rb", buffering=0) as raw:
        np.testing.assert_array_equal(h5read._array(f["x"], raw), values)
