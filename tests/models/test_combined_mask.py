"""The missing-gene mask of a combined screen (`data.combine`) in the losses: values at genes a dataset did
not measure cannot move the ST or BioJEPAC pretraining loss; the stream loader hands the mask over; ST
trains from combined shards (in memory and streamed)."""

import dataclasses

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.cli import main
from biojepac.data import schema
from biojepac.data.combine import CombineConfig, combine_screens
from biojepac.data.stream import CellStream, StreamConfig


def _screen(rng, genes, n_cells, ctx):
    x = rng.poisson(rng.gamma(2.0, 2.0, size=len(genes)), size=(n_cells, len(genes))).astype(np.float32)
    obs = pd.DataFrame({"target_gene": np.resize(["non-targeting", "G001", "G002"], n_cells), "context": ctx,
                        "batch": "1", "pert_type": "CRISPRi"}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """Two datasets over overlapping genes: A measured G000-G029, B G010-G039 (union: 40 genes)."""
    tmp = tmp_path_factory.mktemp("comb")
    rng = np.random.default_rng(0)
    syms = [f"G{i:03d}" for i in range(40)]
    table = tmp / "ids.tsv"
    table.write_text("symbol\tensembl_ids\taliases\n" + "".join(f"{s}\t\t\n" for s in syms))
    _screen(rng, syms[:30], 192, "K562").write_h5ad(tmp / "A.h5ad")
    _screen(rng, syms[10:], 192, "RPE1").write_h5ad(tmp / "B.h5ad")
    out = tmp / "combined.h5ad"
    combine_screens(CombineConfig(screens=(f"A={tmp / 'A.h5ad'}", f"B={tmp / 'B.h5ad'}"), out=out, symbols=str(table),
                                  checksum=False))
    return out


def test_stream_hands_over_each_cells_dataset_mask(combined):
    comb = ad.read_h5ad(combined, backed="r")
    want = {"A": np.arange(40) < 30, "B": np.arange(40) >= 10}
    ds = comb.obs["dataset"].astype(str).to_numpy()
    cells = CellStream(StreamConfig(shard_fpaths=(str(combined),), kind="cells", cell_repr="dense", batch_size=64, block_rows=32))
    b = cells.next_batch()
    for row, mask in zip(b["row"], b["gene_mask"]):
        np.testing.assert_array_equal(mask, want[ds[row]])
    sent = CellStream(StreamConfig(shard_fpaths=(str(combined),), kind="sentences", cell_repr="dense", batch_size=4,
                                   sentence_len=8, block_rows=64))
    b = sent.next_batch()
    for rows, mask in zip(b["pert_row"], b["gene_mask"]):
        assert len(set(ds[rows])) == 1
        np.testing.assert_array_equal(mask, want[ds[rows[0]]])
    assert not b["pert_x"][~b["gene_mask"][:, None, :].repeat(8, 1)].any()  # unmeasured genes hold no value


def test_state_loss_ignores_unmeasured_genes():
    from biojepac.models.state.network import StateTransition
    from biojepac.models.state.trainer import PRESETS, make_loss_fn

    cfg = dataclasses.replace(PRESETS["tiny"][0], set_size=6, pseudobulk_weight=1.0)
    rng = np.random.default_rng(1)
    n_genes = 12
    net = StateTransition(cfg, n_genes, n_genes, 5, 2, 2, key=jax.random.PRNGKey(0))
    mask = np.ones((3, n_genes), bool)
    mask[:, 8:] = False
    batch = {"ctrl": rng.random((3, 6, n_genes), dtype=np.float32), "pert": rng.random((3, 5), dtype=np.float32),
             "context": np.ones(3, np.int32), "batch": np.ones(3, np.int32), "gene_mask": mask}
    batch["target"] = batch["target_expr"] = rng.random((3, 6, n_genes), dtype=np.float32)
    other = dict(batch, target_expr=np.where(mask[:, None, :], batch["target_expr"], 50.0).astype(np.float32))
    loss_fn = eqx.filter_jit(make_loss_fn(dataclasses.replace(cfg, label_dropout=0.0)))
    key = jax.random.PRNGKey(2)
    l1, _ = loss_fn(net, None, batch, key)
    l2, _ = loss_fn(net, None, other, key)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    unmasked = {k: v for k, v in batch.items() if k != "gene_mask"}
    l3, _ = loss_fn(net, None, dict(unmasked, target_expr=other["target_expr"]), key)
    assert float(l3) > float(l1) + 1.0  # without the mask the same values do count


def test_pretrain_loss_ignores_unmeasured_genes():
    from biojepac.models.jepa import stages
    from biojepac.models.jepa.config import get_preset
    from biojepac.models.jepa.encoder import Encoder
    from biojepac.models.jepa.jepa_predictor import MaskPredictor

    mcfg = get_preset("tiny")
    enc_cfg = dataclasses.replace(mcfg.encoder, token_mode="all")
    n_genes = 16
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    student = Encoder(n_genes, enc_cfg, k1)
    predictor = MaskPredictor(enc_cfg.d, mcfg.pretrain.pred_d, mcfg.pretrain.pred_layers, enc_cfg.n_heads, k2, enc_cfg.attention)
    rng = np.random.default_rng(0)
    x = rng.random((4, n_genes), dtype=np.float32)
    mask = np.ones((4, n_genes), bool)
    mask[:, 10:] = False
    lib = jnp.full((4,), 3.0)
    jitted = jax.jit(lambda xx, m: stages.pretrain_loss((student, predictor), student, {"x": xx, "lib": lib, "gene_mask": m},
                                                       jax.random.PRNGKey(1), cfg=mcfg.pretrain)[0])
    loss = lambda xx, m: float(jitted(xx, m))
    x_other = np.where(mask, x, 7.0).astype(np.float32)
    np.testing.assert_allclose(loss(x, mask), loss(x_other, mask), rtol=1e-5)
    full = np.ones_like(mask)
    assert abs(loss(x, full) - loss(x_other, full)) > 1e-4  # without the mask those values count


def test_state_trains_on_combined_screen_in_memory_and_streamed(combined, tmp_path):
    from biojepac.models.state.trainer import FitConfig, SentenceSampler, fit, PRESETS

    adata = ad.read_h5ad(combined)
    cfg = dataclasses.replace(PRESETS["tiny"][0], set_size=8)
    net, meta, *_ = fit(adata, cfg, "onehot", FitConfig(n_steps=3, batch_size=4, run_dpath=tmp_path / "mem", progress=False))
    assert meta.contexts == ("A:K562", "B:RPE1")
    from biojepac.data.combine import gene_masks

    x = adata.X.toarray()
    sampler = SentenceSampler(x, x, adata.obs, np.zeros((2, 3), np.float32), 8, 4, 0, gene_masks(adata.obs, adata.var))
    b = sampler(0)
    ctx_is_b = b["context"] == 2  # codes +1: A:K562 -> 1, B:RPE1 -> 2
    np.testing.assert_array_equal(b["gene_mask"], np.where(ctx_is_b[:, None], np.arange(40) >= 10, np.arange(40) < 30))

    run = tmp_path / "stream"
    assert main(["train", "state-stream", "--shards", str(combined), "--run-dpath", str(run), "--preset", "tiny",
                 "--features", "onehot", "--steps-scale", "0.03", "--set-size", "8", "--block-rows", "64",
                 "--no-progress"]) == 0
    assert (run / "model" / "model.json").is_file()
    from biojepac.models.registry import load

    model = load(run / "model")
    ctrl = x[(adata.obs[schema.PERT_COL] == schema.CONTROL).to_numpy()][:8]
    assert model.predict(ctrl, "G001", "A:K562", seed=0).shape == (8, 40)


def test_biojepac_in_memory_pretrain_batches_carry_the_mask(combined):
    from biojepac.features import make_provider
    from biojepac.models.jepa.trainer import _cell_batch, prepare_screen
    from biojepac.train.loop import EpochSampler

    adata = ad.read_h5ad(combined)
    scr = prepare_screen(adata, make_provider("onehot", adata))
    b = _cell_batch(scr, EpochSampler(adata.n_obs, 32, 0), 0)
    is_b = b["x"][:, :10].sum(1) == 0  # B measured G010-G039 only; A's cells have counts in G000-G009
    np.testing.assert_array_equal(b["gene_mask"], np.where(is_b[:, None], np.arange(40) >= 10, np.arange(40) < 30))


def _jepa_modules(n_genes: int, feat_dim: int):
    from biojepac.models.jepa.config import get_preset
    from biojepac.models.jepa.network import make_modules

    mcfg = get_preset("tiny")
    mcfg = dataclasses.replace(mcfg, encoder=dataclasses.replace(mcfg.encoder, token_mode="all"))
    return mcfg, make_modules(n_genes, feat_dim, mcfg, jax.random.PRNGKey(0), 2)


def test_decode_loss_ignores_unmeasured_genes():
    """The decoder's reconstruction error is the mean over measured (cell, gene) pairs only: checked against
    the squared errors computed cell by cell."""
    from biojepac.models.jepa import stages

    n_genes = 12
    _, mods = _jepa_modules(n_genes, 4)
    rng = np.random.default_rng(3)
    x = rng.random((5, n_genes), dtype=np.float32)
    mask = np.ones((5, n_genes), bool)
    mask[:3, 7:] = False  # the first three cells come from a dataset without genes 7-11
    x[~mask] = 0.0  # as a combined screen stores them
    lib = np.full((5,), 3.0, np.float32)
    recon = eqx.filter_jit(jax.vmap(lambda xx, ll: mods.decoder(*mods.encoder(xx, ll)[:3])[0]))
    sq = (np.asarray(recon(jnp.asarray(x), jnp.asarray(lib))) - x) ** 2  # cell by cell, no mask
    plain = float(stages.decode_loss(mods.decoder, mods.encoder, {"x": x, "lib": lib}, None)[0])
    masked = float(stages.decode_loss(mods.decoder, mods.encoder, {"x": x, "lib": lib, "gene_mask": mask}, None)[0])
    np.testing.assert_allclose(plain, sq.mean(), rtol=1e-5)  # no mask: the plain mean over cells and genes
    np.testing.assert_allclose(masked, sq[mask].mean(), rtol=1e-5)  # masked: unmeasured genes add nothing
    assert abs(plain - masked) > 1e-4


def test_predict_loss_ignores_unmeasured_genes():
    """BioJEPAC stage 3: the pseudobulk expression and latent targets at genes a group's dataset did not measure
    cannot move the loss (and do without the mask)."""
    from biojepac.models.jepa import stages

    n_genes, feat_dim, b, s = 10, 4, 3, 4
    mcfg, mods = _jepa_modules(n_genes, feat_dim)
    d = mcfg.encoder.d
    rng = np.random.default_rng(4)
    mask = np.ones((b, n_genes), bool)
    mask[1, 6:] = False
    batch = {"z_ctrl": rng.normal(size=(b, s, n_genes, d)).astype(np.float32),
             "z_pert": rng.normal(size=(b, s, n_genes, d)).astype(np.float32),
             "idx": np.tile(np.arange(n_genes, dtype=np.int32), (b, 1)),
             "prior": rng.normal(size=(b, n_genes, d)).astype(np.float32) * 0.1,
             "feat": rng.normal(size=(b, feat_dim)).astype(np.float32), "mode": np.zeros(b, np.int32),
             "ctx": np.ones(b, np.int32), "target": np.zeros((b, n_genes), np.float32),
             "delta_z": rng.normal(size=(b, n_genes, d)).astype(np.float32) * 0.1,
             "delta_x": rng.normal(size=(b, n_genes)).astype(np.float32) * 0.1, "gene_mask": mask}
    other = dict(batch, delta_x=np.where(mask, batch["delta_x"], 9.0).astype(np.float32),
                 delta_z=np.where(mask[..., None], batch["delta_z"], -4.0).astype(np.float32))
    cfg = dataclasses.replace(mcfg.predict, label_dropout=0.0)
    params, extra = mods.predictor, (mods.encoder, mods.decoder, mods.composer)
    if cfg.finetune_composer:
        params, extra = (mods.predictor, mods.composer), (mods.encoder, mods.decoder)
    fn = eqx.filter_jit(lambda bb: stages.predict_loss(params, extra, bb, jax.random.PRNGKey(0), cfg=cfg))
    (l1, m1), (l2, m2) = fn(batch), fn(other)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    np.testing.assert_allclose(float(m1["expr_mse"]), float(m2["expr_mse"]), rtol=1e-6)
    unmasked = {k: v for k, v in batch.items() if k != "gene_mask"}
    l3, m3 = fn(dict(unmasked, delta_x=other["delta_x"], delta_z=other["delta_z"]))
    assert float(m3["expr_mse"]) > float(m1["expr_mse"]) + 1.0 and float(l3) > float(l1)
    all_ones = fn(dict(batch, gene_mask=np.ones_like(mask)))[1]["expr_mse"]  # a full mask is the plain mean
    np.testing.assert_allclose(float(all_ones), float(fn(unmasked)[1]["expr_mse"]), rtol=1e-6)


def test_biojepac_fit_on_combined_screen_hands_each_group_its_mask(combined, monkeypatch):
    """Plumbing: the stage-3 batches of a fit on a combined screen carry each group's dataset mask."""
    from biojepac.models.jepa import trainer
    from biojepac.models.jepa.config import get_preset

    adata = ad.read_h5ad(combined)
    seen = []
    real = trainer._run

    class Seen(Exception):
        pass

    def spy(run, name, state, step_fn, get_batch, end, n_steps):
        if name == "predict":  # the batches are what is checked; training the stage is not needed
            seen.extend(get_batch(step) for step in range(4))
            raise Seen
        return real(run, name, state, step_fn, get_batch, end, n_steps)

    monkeypatch.setattr(trainer, "_run", spy)
    with pytest.raises(Seen):
        trainer.fit_biojepac(adata, "onehot", get_preset("tiny"), steps_scale=0.02)
    is_b = np.concatenate([np.abs(b["delta_x"][:, :10]).sum(1) == 0 for b in seen])  # B measured G010-G039 only
    assert is_b.any() and not is_b.all()  # groups of both datasets were drawn
    mask = np.concatenate([b["gene_mask"] for b in seen])
    np.testing.assert_array_equal(mask, np.where(is_b[:, None], np.arange(40) >= 10, np.arange(40) < 30))
