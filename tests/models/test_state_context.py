"""`biojepac train state` keeps every context and batch of the file (issue 15, part 1): on the real
McFaline23 part of the shared fixture (three glioblastoma lines), the saved model lists three contexts,
and every training sentence pairs one (perturbation, context, batch) group with controls of that group."""

import json

import numpy as np

from biojepac.data.recipes import load_norman_mcfaline
from biojepac.features import resolve_features
from biojepac.models.state import model as st
from biojepac.models.state import trainer


def _mcfaline(shared_data_dpath, tmp_path):
    full = load_norman_mcfaline(shared_data_dpath / "norman19_mcfaline23_devel.h5ad")
    adata = full[full.obs["dataset"].to_numpy() == "mcfaline23"].copy()
    # The fixture has one batch; give it two (by row parity, so both hold controls) to test batch keeping.
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2 == 0, "b0", "b1")
    keep = ["target_gene", "context", "batch", "pert_type"]
    adata.obs = adata.obs[keep].astype(str)
    adata.uns = {}
    fpath = tmp_path / "mcfaline.h5ad"
    adata.write_h5ad(fpath)
    return adata, fpath


def test_train_state_keeps_three_cell_lines_and_two_batches(shared_data_dpath, tmp_path):
    adata, fpath = _mcfaline(shared_data_dpath, tmp_path)
    cfg = st.TrainStateConfig(screen=fpath, run_dpath=tmp_path / "run", preset="tiny", steps_scale=0.05,
                              features="onehot", progress=False)
    model = st.train(cfg)
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["contexts"] == ["A172", "T98G", "U87MG"]
    assert meta["batches"] == ["b0", "b1"]
    # Each context gets its own learned token: the same controls predict differently under each label.
    ctrl = np.asarray(adata[adata.obs["target_gene"] == "non-targeting"].X.toarray())[:32]
    preds = [model.predict(ctrl, "SGK1", c, seed=0) for c in meta["contexts"]]
    assert all(np.isfinite(p).all() for p in preds)
    assert not np.allclose(preds[0], preds[1]) and not np.allclose(preds[1], preds[2])


def test_sentences_come_from_one_group_with_that_groups_controls(shared_data_dpath, tmp_path):
    adata, _ = _mcfaline(shared_data_dpath, tmp_path)
    rows = np.arange(adata.n_obs, dtype=np.float32)[:, None]  # a cell's token is its row number
    features = resolve_features("onehot", adata)
    perts = sorted(set(adata.obs["target_gene"]) - {"non-targeting"})
    sampler = trainer.SentenceSampler(rows, rows, adata.obs, features.vectors(perts), 16, 32, seed=0)
    # 9 targets x 3 lines x 2 batches
    assert len(sampler.groups) == 54
    pert, ctx, bat = (adata.obs[c].to_numpy() for c in ("target_gene", "context", "batch"))
    for step in range(3):
        batch = sampler(step)
        for b in range(32):
            t, c = batch["target"][b, :, 0].astype(int), batch["ctrl"][b, :, 0].astype(int)
            assert len(set(pert[t])) == 1 and (pert[c] == "non-targeting").all()
            assert set(ctx[t]) == set(ctx[c]) == {sampler.contexts[batch["context"][b] - 1]}
            assert set(bat[t]) == set(bat[c]) == {sampler.batches[batch["batch"][b] - 1]}
