"""Atomic checkpoints of a whole training state: parameters, optimiser, EMA teacher / frozen parts,
PRNG key and step (the step is the data position, because batches are a pure function of it).

One file per run: a JSON header line (step, the caller's config, anything else it wants to rebuild
the model) followed by Equinox's leaf serialisation. It is written to a temporary file and moved
into place with `os.replace`, so a run killed while saving leaves the previous checkpoint intact.
"""

import json
import os
import pathlib

import equinox as eqx
import jax
import numpy as np

from biojepac.io import temp_sibling

CKPT_FNAME = "ckpt.eqx"


def save(ckpt_fpath: pathlib.Path, state, header: dict) -> None:
    """Write `state` (any pytree of arrays) with a JSON `header`, atomically."""
    ckpt_fpath = pathlib.Path(ckpt_fpath)
    ckpt_fpath.parent.mkdir(parents=True, exist_ok=True)
    # Gather to host first so a sharded state serialises the same as a single-device one.
    state = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, state)
    tmp_fpath = temp_sibling(ckpt_fpath)  # hidden, pid-named: one a killed save leaves is removed by the next
    try:
        with open(tmp_fpath, "wb") as fd:
            fd.write((json.dumps(header, default=str) + "\n").encode())
            eqx.tree_serialise_leaves(fd, state)
            fd.flush()
            os.fsync(fd.fileno())
        os.replace(tmp_fpath, ckpt_fpath)
    finally:
        tmp_fpath.unlink(missing_ok=True)


def load_header(ckpt_fpath: pathlib.Path) -> dict:
    with open(ckpt_fpath, "rb") as fd:
        return json.loads(fd.readline().decode())


def load(ckpt_fpath: pathlib.Path, like):
    """Read a checkpoint into a pytree with the same structure as `like`. Returns (state, header)."""
    with open(ckpt_fpath, "rb") as fd:
        header = json.loads(fd.readline().decode())
        state = eqx.tree_deserialise_leaves(fd, like)
    return state, header
