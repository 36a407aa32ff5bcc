"""Stream fixed-shape minibatches from backed `.h5ad` / AnnData-Zarr shards that need not fit in memory.

How it reads (why it is fast on disk and flat in memory):
- The rows of all shards are cut into *blocks* of `block_rows` contiguous rows. A CSR block is three
  contiguous slices (`indptr`, `indices`, `data`), read straight from h5py/zarr; X is never loaded whole.
- Global shuffle, two levels: each epoch permutes all blocks of all shards with `(seed, epoch)`, then
  `window_blocks` blocks at a time are pooled into a *window* whose rows are permuted again. Memory is
  bounded by one or two windows, whatever the file size.
- Host `i` of `n` takes blocks `i, i+n, ...` of the epoch's permutation, so each host reads only its part.
  Every host computes every host's item count from metadata, so all agree on the batches per epoch.
- Rows stay CSR until a batch is assembled into top-k token sets (`tokens`) or dense HVG rows (`dense`).
- The position is `(epoch, batch_in_epoch)`; window contents are a pure function of
  `(seed, epoch, host, window)`, so `restore(state)` resumes without skipping or repeating an item.

Three batch kinds:
- `cells`: single cells (pretraining);
- `pairs`: a perturbed cell with a control from the same context and batch (`ctrl_*` / `pert_*` fields);
- `sentences`: S perturbed cells sharing context, batch and target, with S controls of that context and
  batch (fields shaped `(batch, S, ...)`), as STATE's cell sentences.
Controls follow the one pairing rule, `data.pairing.control_slices` (a batch without controls borrows its
context's, with a warning; a context without controls is an error). They are drawn from the same window
when it has some of that context and batch, otherwise from the rule's pool over all shards (a few
single-row reads).
"""

import dataclasses
import pathlib
import typing

import numpy as np

from biojepac.data import schema
from biojepac.errors import InputError


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    shard_fpaths: tuple[str, ...] = ()
    """Backed `.h5ad` files or AnnData `.zarr` stores with CSR X and identical genes, read in this order; a
    folder of `.h5ad` shards (`data combine --shard-cells`) stands for its `*.h5ad` files in name order."""
    kind: typing.Literal["cells", "pairs", "sentences"] = "cells"
    """What one batch item is: a cell, a (control, perturbed) pair, or a pair of S-cell sentences."""
    cell_repr: typing.Literal["tokens", "dense"] = "tokens"
    """Cells as top-k gene token sets (gene index, value, mask) or as dense rows over all genes."""
    batch_size: int = 256
    """Items per batch on this host."""
    top_k: int = 256
    """Tokens per cell: the k highest-valued genes; cells with fewer expressed genes are padded (mask False)."""
    sentence_len: int = 16
    """Cells per sentence (`kind="sentences"`)."""
    block_rows: int = 1024
    """Contiguous rows read at once: the unit of the cross-shard shuffle."""
    window_blocks: int = 16
    """Blocks pooled and shuffled together; memory holds about two windows."""
    seed: int = 0
    """Seeds the block permutation, the in-window shuffles and control draws."""


class CsrShard:
    """One backed `.h5ad` (h5py) or AnnData `.zarr` store: CSR row ranges and obs columns on demand."""

    def __init__(self, fpath: str):
        self.fpath = str(fpath)
        if not pathlib.Path(fpath).exists():
            raise InputError(f"{fpath}: shard not found")
        if pathlib.Path(fpath).is_dir() or self.fpath.endswith(".zarr"):
            import zarr

            self._root = zarr.open_group(self.fpath, mode="r")
        else:
            from biojepac.data.load import open_h5

            self._root = open_h5(self.fpath)
        if "X" not in self._root:
            raise InputError(f"{fpath}: not an AnnData store (no 'X')")
        x = self._root["X"]
        if dict(x.attrs).get("encoding-type") != "csr_matrix":
            raise InputError(f"{fpath}: X must be a CSR sparse matrix, found {dict(x.attrs).get('encoding-type')!r}")
        self.n_rows, self.n_genes = (int(v) for v in x.attrs["shape"])
        self._indptr, self._indices, self._data = x["indptr"], x["indices"], x["data"]

    def var(self):
        import anndata as ad

        return ad.io.read_elem(self._root["var"])

    def var_names(self) -> np.ndarray:
        return np.asarray(self.var().index, dtype=str)

    def has_obs(self, col: str) -> bool:
        return col in self._root["obs"]

    def obs_codes(self, col: str) -> tuple[np.ndarray, np.ndarray]:
        """(category names, per-row codes) of an obs column; categoricals are read as stored (compact codes)."""
        import anndata as ad
        import pandas as pd

        if col not in self._root["obs"]:
            raise InputError(f"{self.fpath}: obs has no column {col!r} (needed for pairs/sentences)")
        values = ad.io.read_elem(self._root["obs"][col])
        cat = values if isinstance(values, pd.Categorical) else pd.Categorical(np.asarray(values, dtype=str))
        if (cat.codes < 0).any():
            raise InputError(f"{self.fpath}: obs column {col!r} has missing values (row {int(np.argmax(cat.codes < 0))})")
        return np.asarray(cat.categories, dtype=str), np.asarray(cat.codes)

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR (indptr from 0, indices, data) of rows [start, stop)."""
        indptr = np.asarray(self._indptr[start : stop + 1], dtype=np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        indices, data = np.asarray(self._indices[lo:hi], dtype=np.int32), np.asarray(self._data[lo:hi], dtype=np.float32)
        if not (data.min(initial=0.0) >= 0 and data.max(initial=0.0) < np.inf):  # NaN fails both; no copy made
            j = int(np.flatnonzero(~(data >= 0) | (data == np.inf))[0])
            row = start + int(np.searchsorted(indptr - lo, j, side="right") - 1)
            raise InputError(f"{self.fpath}: value {float(data[j]):g} at row {row}, gene {str(self.var_names()[indices[j]])!r}; "
                             "expression must be finite and >= 0 (prepare shards with `biojepac data prepare-ooc`)")
        return indptr - lo, indices, data


def expand_shards(fpaths: tuple[str, ...]) -> tuple[str, ...]:
    """Each folder of `.h5ad` shards replaced by its `*.h5ad` files in name order (a `.zarr` store, also a
    folder, stays one shard)."""
    out: list[str] = []
    for fpath in map(pathlib.Path, fpaths):
        is_zarr = fpath.suffix == ".zarr" or any((fpath / m).exists() for m in (".zgroup", "zarr.json"))
        if fpath.is_dir() and not is_zarr:
            found = sorted(fpath.glob("*.h5ad"))
            if not found:
                raise InputError(f"{fpath}: a folder with no .h5ad shards (nor a .zarr store)")
            out += map(str, found)
        else:
            out.append(str(fpath))
    return tuple(out)


@dataclasses.dataclass
class _Window:
    """Rows of one window in CSR, and its items as local row positions `(n_items, width)`."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    items: np.ndarray
    rows: np.ndarray  # global row id per local row


class CellStream:
    """Seeded, resumable, per-host minibatches from CSR shards. Iterate, or call `next_batch()`."""

    def __init__(self, cfg: StreamConfig, process_index: int = 0, process_count: int = 1):
        assert cfg.shard_fpaths, "StreamConfig.shard_fpaths is empty"
        assert 0 <= process_index < process_count, f"bad host {process_index} of {process_count}"
        cfg = dataclasses.replace(cfg, shard_fpaths=expand_shards(cfg.shard_fpaths))
        self.cfg, self.host, self.n_hosts = cfg, process_index, process_count
        self.shards = [CsrShard(f) for f in cfg.shard_fpaths]
        self.n_genes = self.shards[0].n_genes
        names0 = self.shards[0].var_names()
        schema.check_gene_names(names0, self.shards[0].fpath)
        for shard in self.shards[1:]:
            if shard.n_genes != self.n_genes or not np.array_equal(shard.var_names(), names0):
                raise InputError(f"{shard.fpath}: genes differ from {self.shards[0].fpath}; harmonise shards first")
        self.gene_names = names0
        self.shard_offsets = np.cumsum([0] + [s.n_rows for s in self.shards])
        self.n_rows = int(self.shard_offsets[-1])
        self._make_blocks()
        self._load_gene_masks()
        if cfg.kind != "cells":
            self._load_labels()
        self.epoch, self.batch_in_epoch = 0, 0
        self._plan: tuple[int, np.ndarray, np.ndarray, int] | None = None  # epoch, windows, cum_items, n_batches
        self._epoch_first_step = [0]  # global step of each epoch's first batch, extended on demand
        self._cache: dict[tuple[int, int], _Window] = {}

    # ---- metadata (no X read) ----
    def _make_blocks(self) -> None:
        starts, lens, shard_ids = [], [], []
        for i, shard in enumerate(self.shards):
            s = np.arange(0, shard.n_rows, self.cfg.block_rows)
            starts.append(s + self.shard_offsets[i])
            lens.append(np.minimum(self.cfg.block_rows, shard.n_rows - s))
            shard_ids.append(np.full(len(s), i))
        self.block_start, self.block_len = np.concatenate(starts), np.concatenate(lens)
        self.block_shard = np.concatenate(shard_ids)

    def _load_labels(self) -> None:
        """Per-row codes for target, context and batch: a few bytes per cell, kept in memory."""
        import pandas as pd

        from biojepac.data.pairing import control_slices

        self.labels = {c: self._merged_codes(c) for c in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL)}
        (t_names, target), (c_names, ctx), (b_names, bat) = (self.labels[c] for c in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL))
        self.is_control = target == np.searchsorted(t_names, schema.CONTROL) if schema.CONTROL in t_names else np.zeros(len(target), bool)
        self.group_cb = np.unique(ctx.astype(np.int64) * len(b_names) + bat, return_inverse=True)[1].astype(np.int32)
        self.group_cbt = np.unique(self.group_cb.astype(np.int64) * len(t_names) + target, return_inverse=True)[1].astype(np.int32)
        # The rule's control pool of every (context, batch) over all shards, for windows that hold none of it;
        # kept per group (every cell of a group has the same slice), not per row.
        fpaths = self.cfg.shard_fpaths
        pools = control_slices(pd.Categorical.from_codes(ctx, c_names), pd.Categorical.from_codes(bat, b_names), self.is_control,
                               fpaths[0] if len(fpaths) == 1 else f"{fpaths[0]} (+{len(fpaths) - 1} more shards)")
        n_cb = int(self.group_cb.max()) + 1
        self._pool_rows = pools.order
        self._pool_start, self._pool_count = np.zeros(n_cb, np.int64), np.zeros(n_cb, np.int64)
        self._pool_start[self.group_cb], self._pool_count[self.group_cb] = pools.offset, pools.count

    def _load_gene_masks(self) -> None:
        """A combined screen's measured-gene masks (`data.combine`): per row, the index of its dataset's mask
        in `self.gene_mask_table` (masks of every shard stacked). None when no shard has them."""
        from biojepac.data.combine import DATASET_COL, dataset_index, measured_table

        self.gene_mask_table = self.mask_code = None
        per_shard = []
        for shard in self.shards:
            table = measured_table(shard.var()) if shard.has_obs(DATASET_COL) else None
            if table is not None:
                ds_names, ds_codes = shard.obs_codes(DATASET_COL)
                table = dataset_index(table[0], ds_names, shard.fpath)[ds_codes], table[1]
            per_shard.append(table)
        if all(m is None for m in per_shard):
            return
        tables, codes, offset = [], [], 0
        for shard, masks in zip(self.shards, per_shard):
            if masks is None:  # a plain shard measured every gene
                masks = (np.zeros(shard.n_rows, np.int32), np.ones((1, self.n_genes), bool))
            codes.append(masks[0] + offset)
            tables.append(masks[1])
            offset += len(masks[1])
        self.mask_code, self.gene_mask_table = np.concatenate(codes), np.concatenate(tables)

    def _merged_codes(self, col: str) -> tuple[np.ndarray, np.ndarray]:
        """One sorted category list over all shards and each row's code in it (int32, 4 bytes a cell)."""
        per_shard = [s.obs_codes(col) for s in self.shards]
        names = np.unique(np.concatenate([n for n, _ in per_shard]))
        codes = np.concatenate([np.searchsorted(names, n).astype(np.int32)[c] for n, c in per_shard])
        return names, codes

    def _windows(self, epoch: int, host: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.block_start))
        mine = perm[host :: self.n_hosts]
        return [mine[i : i + self.cfg.window_blocks] for i in range(0, len(mine), self.cfg.window_blocks)]

    def _window_rows(self, blocks: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(s, s + n) for s, n in zip(self.block_start[blocks], self.block_len[blocks])])

    def _n_items(self, rows: np.ndarray) -> int:
        pert = rows[~self.is_control[rows]]
        if self.cfg.kind == "pairs":
            return len(pert)
        return int((np.bincount(self.group_cbt[pert]) // self.cfg.sentence_len).sum())

    def _epoch_plan(self, epoch: int):
        if self._plan is None or self._plan[0] != epoch:
            if self.cfg.kind == "cells":  # item counts straight from block lengths: no per-row arrays
                counts = [[int(self.block_len[w].sum()) for w in self._windows(epoch, h)] for h in range(self.n_hosts)]
            else:
                counts = [[self._n_items(self._window_rows(w)) for w in self._windows(epoch, h)] for h in range(self.n_hosts)]
            n_batches = min(sum(c) for c in counts) // self.cfg.batch_size
            if n_batches == 0:
                raise InputError(f"{self.cfg.shard_fpaths[0]}: too few items for batch_size={self.cfg.batch_size} on {self.n_hosts} host(s)")
            self._plan = (epoch, self._windows(epoch, self.host), np.cumsum([0] + counts[self.host]), n_batches)
            self._cache = {k: v for k, v in self._cache.items() if k[0] == epoch}
        return self._plan

    @property
    def batches_per_epoch(self) -> int:
        return self._epoch_plan(self.epoch)[3]

    # ---- state ----
    def state(self) -> dict:
        """The position to checkpoint: the next batch to yield, plus what must match on restore."""
        c = self.cfg
        return dict(epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, seed=c.seed, batch_size=c.batch_size,
                    n_rows=self.n_rows, process_count=self.n_hosts, kind=c.kind)

    def restore(self, state: dict) -> None:
        mine = self.state()
        for key in ("seed", "batch_size", "n_rows", "process_count", "kind"):
            if state[key] != mine[key]:
                raise InputError(f"stream state: {key}={state[key]!r} was saved, but this stream has {mine[key]!r}")
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])

    # ---- reading ----
    def _read(self, rows_sorted_blocks: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Concatenate CSR of global row ranges [(start, stop), ...]."""
        parts = []
        for start, stop in rows_sorted_blocks:
            s = int(np.searchsorted(self.shard_offsets, start, side="right") - 1)
            off = int(self.shard_offsets[s])
            parts.append(self.shards[s].read_rows(start - off, stop - off))
        lens = np.concatenate([np.diff(p[0]) for p in parts])
        indptr = np.concatenate([[0], np.cumsum(lens)])
        return indptr, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    def _window(self, epoch: int, w: int) -> _Window:
        if (epoch, w) in self._cache:
            return self._cache[(epoch, w)]
        blocks = self._epoch_plan(epoch)[1][w]
        ranges = [(int(s), int(s + n)) for s, n in zip(self.block_start[blocks], self.block_len[blocks])]
        indptr, indices, data = self._read(ranges)
        rows = self._window_rows(blocks)
        rng = np.random.default_rng([self.cfg.seed, epoch, self.host, w])
        order = rng.permutation(len(rows))
        if self.cfg.kind == "cells":
            items = order[:, None]
        else:
            items, extra = self._sentences(rows, order, rng)
            if len(extra):  # controls from outside the window: single-row reads, appended as local rows
                e_ptr, e_idx, e_dat = self._read([(int(r), int(r) + 1) for r in extra])
                indptr = np.concatenate([indptr, indptr[-1] + e_ptr[1:]])
                indices, data, rows = np.concatenate([indices, e_idx]), np.concatenate([data, e_dat]), np.concatenate([rows, extra])
        win = _Window(indptr, indices, data, items, rows)
        self._cache = {k: v for k, v in self._cache.items() if k == (epoch, w - 1)}  # keep the one a batch may straddle
        self._cache[(epoch, w)] = win
        return win

    def _sentences(self, rows: np.ndarray, order: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Items `(n, 2S)`: S perturbed local rows sharing (context, batch, target), then S matched controls."""
        S = self.cfg.sentence_len if self.cfg.kind == "sentences" else 1
        pert = order[~self.is_control[rows[order]]]
        pert = pert[np.argsort(self.group_cbt[rows[pert]], kind="stable")]
        start, count = _segments(self.group_cbt[rows[pert]], self.group_cbt.max() + 1)
        keep = np.concatenate([np.arange(s, s + (c // S) * S) for s, c in zip(start, count) if c >= S] or [np.zeros(0, int)])
        sent = pert[keep].reshape(-1, S)[rng.permutation(len(keep) // S)]
        # Controls of the sentence's (context, batch): from this window when it has some, else the global pool.
        cb = self.group_cb[rows[sent[:, 0]]]
        ctrl = np.flatnonzero(self.is_control[rows])
        ctrl = ctrl[np.argsort(self.group_cb[rows[ctrl]], kind="stable")]
        c_start, c_count = _segments(self.group_cb[rows[ctrl]], self.group_cb.max() + 1)
        u = rng.random((len(sent), S))
        local = c_count[cb] > 0
        pick = np.zeros((len(sent), S), dtype=np.int64)
        pick[local] = ctrl[c_start[cb[local], None] + (u[local] * c_count[cb[local], None]).astype(np.int64)]
        g = self._pool_rows[self._pool_start[cb[~local], None] + (u[~local] * self._pool_count[cb[~local], None]).astype(np.int64)]
        extra, inv = np.unique(g, return_inverse=True)
        pick[~local] = len(rows) + inv.reshape(g.shape)
        return np.concatenate([sent, pick], axis=1), extra

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The batch of global step `step` (counted from epoch 0): a pure function of the step, as
        `train.loop.run_loop` wants, and cheap when steps come in order (the window cache is reused)."""
        while self._epoch_first_step[-1] <= step:
            e = len(self._epoch_first_step) - 1
            self._epoch_first_step.append(self._epoch_first_step[-1] + self._epoch_plan(e)[3])
        epoch = int(np.searchsorted(self._epoch_first_step, step, side="right") - 1)
        self.epoch, self.batch_in_epoch = epoch, step - self._epoch_first_step[epoch]
        return self.next_batch()

    # ---- batches ----
    def next_batch(self) -> dict[str, np.ndarray]:
        epoch, windows, cum, n_batches = self._epoch_plan(self.epoch)
        if self.batch_in_epoch >= n_batches:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            return self.next_batch()
        B = self.cfg.batch_size
        lo, hi = self.batch_in_epoch * B, (self.batch_in_epoch + 1) * B
        parts = []
        while lo < hi:
            w = int(np.searchsorted(cum, lo, side="right") - 1)
            win = self._window(epoch, w)
            a, b = lo - cum[w], min(hi, cum[w + 1]) - cum[w]
            parts.append(self._assemble(win, win.items[a:b]))
            lo += b - a
        self.batch_in_epoch += 1
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def __iter__(self) -> typing.Iterator[dict[str, np.ndarray]]:
        while True:
            yield self.next_batch()

    def _assemble(self, win: _Window, items: np.ndarray) -> dict[str, np.ndarray]:
        if self.cfg.kind == "cells":
            out = {**self._cells(win, items[:, 0]), "row": win.rows[items[:, 0]]}
            if self.gene_mask_table is not None:
                out["gene_mask"] = self.gene_mask_table[self.mask_code[out["row"]]]
            return out
        S = items.shape[1] // 2
        squeeze = (lambda x: x[:, 0]) if self.cfg.kind == "pairs" else (lambda x: x)
        out = {}
        for prefix, part in (("pert_", items[:, :S]), ("ctrl_", items[:, S:])):
            cells = self._cells(win, part.ravel())
            out.update({prefix + k: squeeze(v.reshape(part.shape + v.shape[1:])) for k, v in cells.items()})
            out[prefix + "row"] = squeeze(win.rows[part])
        first = win.rows[items[:, 0]]
        for col, key in ((schema.PERT_COL, "target"), (schema.CONTEXT_COL, "context"), (schema.BATCH_COL, "batch")):
            out[key] = self.labels[col][1][first].astype(np.int32)
        if self.gene_mask_table is not None:  # a sentence's cells share context, hence dataset and mask
            out["gene_mask"] = self.gene_mask_table[self.mask_code[first]]
        return out

    def _cells(self, win: _Window, local: np.ndarray) -> dict[str, np.ndarray]:
        if self.cfg.cell_repr == "tokens":
            return csr_to_tokens(win.indptr, win.indices, win.data, local, self.cfg.top_k)
        return csr_to_dense(win.indptr, win.indices, win.data, local, self.n_genes)


def _segments(sorted_codes: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each code's run in a sorted code array (length 0 where absent)."""
    count = np.bincount(sorted_codes, minlength=n_codes)
    return np.concatenate([[0], np.cumsum(count)[:-1]]), count


def _gather(indptr, local):
    """Per selected row: padded positions into indices/data, and the validity mask."""
    starts, lens = indptr[local], indptr[local + 1] - indptr[local]
    width = max(int(lens.max(initial=0)), 1)
    j = np.arange(width)
    valid = j[None, :] < lens[:, None]
    return np.where(valid, starts[:, None] + j, 0), valid


def csr_to_tokens(indptr, indices, data, local: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Top-k stored values per row (ties broken by lower gene index), padded to k; plus the row total."""
    pos, valid = _gather(indptr, local)
    vals = np.where(valid, data[pos] if len(data) else 0.0, -np.inf)
    top = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    mask = np.take_along_axis(valid, top, 1)
    out_vals = np.where(mask, np.take_along_axis(vals, top, 1), 0.0).astype(np.float32)
    genes = np.where(mask, np.take_along_axis(indices[pos] if len(indices) else pos, top, 1), 0).astype(np.int32)
    pad = k - top.shape[1]
    if pad > 0:
        out_vals, genes, mask = (np.pad(a, ((0, 0), (0, pad))) for a in (out_vals, genes, mask))
    lib = np.where(valid, vals, 0.0).sum(1).astype(np.float32)
    return {"genes": genes, "values": out_vals, "mask": mask, "library_size": lib}


def csr_to_dense(indptr, indices, data, local: np.ndarray, n_genes: int) -> dict[str, np.ndarray]:
    pos, valid = _gather(indptr, local)
    x = np.zeros((len(local), n_genes), dtype=np.float32)
    r = np.broadcast_to(np.arange(len(local))[:, None], pos.shape)
    x[r[valid], indices[pos[valid]]] = data[pos[valid]]
    return {"x": x}
