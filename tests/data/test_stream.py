"""The streaming loader: exact coverage, exact resume, disjoint hosts, matched controls, correct tokens."""

import numpy as np
import pytest

from biojepac.data import stream
from biojepac.errors import InputError
from random_screen import build_random_screen


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of one screen: an .h5ad and a .zarr, with sparse rows and 3 contexts."""
    dpath = tmp_path_factory.mktemp("shards")
    screen = build_random_screen(n_cells=900, n_genes=30, n_perts=4, contexts=("a", "b", "c"), seed=1)
    x = screen.X.toarray()
    x[x < 3] = 0  # sparser rows, some with fewer than top_k genes
    screen.X = type(screen.X)(x)
    screen[:500].copy().write_h5ad(dpath / "s0.h5ad")
    screen[500:].copy().write_zarr(dpath / "s1.zarr")
    return (str(dpath / "s0.h5ad"), str(dpath / "s1.zarr")), screen


def _cfg(fpaths, **kw):
    base = dict(shard_fpaths=fpaths, batch_size=32, top_k=8, block_rows=50, window_blocks=3, seed=7)
    return stream.StreamConfig(**{**base, **kw})


def test_one_epoch_covers_each_row_once_with_exact_tokens(shards):
    fpaths, screen = shards
    s = stream.CellStream(_cfg(fpaths))
    n = s.batches_per_epoch
    assert n == 900 // 32
    batches = [s.next_batch() for _ in range(n)]
    rows = np.concatenate([b["row"] for b in batches])
    assert len(np.unique(rows)) == len(rows) == n * 32
    assert not np.array_equal(rows, np.sort(rows)), "rows must be shuffled"
    x = screen.X.toarray()
    b = batches[3]
    for i, r in enumerate(b["row"]):
        # reference top-k: highest values, ties to the lower gene index
        order = sorted(np.flatnonzero(x[r]), key=lambda g: (-x[r, g], g))[:8]
        got = b["genes"][i][b["mask"][i]]
        np.testing.assert_array_equal(got, order)
        np.testing.assert_allclose(b["values"][i][b["mask"][i]], x[r, order])
        assert b["mask"][i].sum() == min(8, (x[r] > 0).sum())
        np.testing.assert_allclose(b["library_size"][i], x[r].sum(), rtol=1e-6)
    assert b["genes"].shape == (32, 8) and b["values"].dtype == np.float32


def test_resume_neither_skips_nor_repeats(shards):
    fpaths, _ = shards
    ref = stream.CellStream(_cfg(fpaths))
    want = [ref.next_batch()["row"] for _ in range(40)]  # crosses an epoch boundary (28 per epoch)
    a = stream.CellStream(_cfg(fpaths))
    got = [a.next_batch()["row"] for _ in range(17)]
    b = stream.CellStream(_cfg(fpaths))
    b.restore(a.state())
    got += [b.next_batch()["row"] for _ in range(23)]
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    c = stream.CellStream(_cfg(fpaths))  # random access by global step gives the same batches
    for step in (39, 0, 28, 27):
        np.testing.assert_array_equal(c.batch_at(step)["row"], want[step])
    with pytest.raises(InputError, match="batch_size"):
        stream.CellStream(_cfg(fpaths, batch_size=16)).restore(a.state())


def test_hosts_read_disjoint_parts_with_equal_step_counts(shards):
    fpaths, _ = shards
    hosts = [stream.CellStream(_cfg(fpaths, batch_size=16), process_index=i, process_count=2) for i in range(2)]
    assert hosts[0].batches_per_epoch == hosts[1].batches_per_epoch
    rows = [np.concatenate([h.next_batch()["row"] for _ in range(h.batches_per_epoch)]) for h in hosts]
    assert not set(rows[0]) & set(rows[1])
    # each host reads only rows of its own blocks
    for i, h in enumerate(hosts):
        blocks = h._windows(0, i)
        assert set(rows[i]) <= set(h._window_rows(np.concatenate(blocks)))


def test_pairs_and_sentences_match_context_batch_and_target(shards):
    fpaths, screen = shards
    obs = screen.obs
    target, ctx, bat = (obs[c].to_numpy() for c in ("target_gene", "context", "batch"))
    s = stream.CellStream(_cfg(fpaths, kind="pairs", batch_size=16))
    b = s.next_batch()
    assert b["pert_genes"].shape == (16, 8) and b["ctrl_values"].shape == (16, 8)
    p, c = b["pert_row"], b["ctrl_row"]
    assert (target[p] != "non-targeting").all() and (target[c] == "non-targeting").all()
    assert (ctx[p] == ctx[c]).all() and (bat[p] == bat[c]).all()
    assert (s.labels["target_gene"][0][b["target"]] == target[p]).all()

    s = stream.CellStream(_cfg(fpaths, kind="sentences", cell_repr="dense", sentence_len=4, batch_size=4))
    for _ in range(3):
        b = s.next_batch()
        assert b["pert_x"].shape == (4, 4, 30)
        p, c = b["pert_row"], b["ctrl_row"]
        for i in range(4):
            assert len(set(target[p[i]])) == 1 and len(set(ctx[p[i]])) == 1 and len(set(bat[p[i]])) == 1
            assert (target[c[i]] == "non-targeting").all() and (ctx[c[i]] == ctx[p[i, 0]]).all() and (bat[c[i]] == bat[p[i, 0]]).all()
        np.testing.assert_array_equal(b["ctrl_x"][1, 2], screen.X[c[1, 2]].toarray().ravel())


def test_missing_controls_and_columns_are_named(tmp_path):
    screen = build_random_screen(n_cells=60, contexts=("a", "b"))
    screen.obs.loc[screen.obs["context"] == "b", "target_gene"] = "G001"
    fpath = tmp_path / "noctrl.h5ad"
    screen.write_h5ad(fpath)
    with pytest.raises(InputError, match="context 'b'"):
        stream.CellStream(_cfg((str(fpath),), kind="pairs"))
    del screen.obs["batch"]
    screen.write_h5ad(fpath)
    with pytest.raises(InputError, match="'batch'"):
        stream.CellStream(_cfg((str(fpath),), kind="pairs"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -2.0])
def test_nan_inf_and_negative_values_are_refused_naming_row_and_gene(tmp_path, bad):
    screen = build_random_screen(n_cells=120, n_genes=30, seed=2)
    x = screen.X.toarray()
    x[77, 4] = bad
    screen.X = type(screen.X)(x)
    fpath = tmp_path / "bad.h5ad"
    screen.write_h5ad(fpath)
    s = stream.CellStream(_cfg((str(fpath),), kind="cells", cell_repr="dense", batch_size=120, block_rows=40))
    with pytest.raises(InputError, match=rf"bad.h5ad: value {bad:g} at row 77, gene 'G004'; expression must be finite"):
        s.batch_at(0)
