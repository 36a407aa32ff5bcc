"""Build tests/fixtures/state_run: a tiny arc-state ST run folder and the predictions `state tx infer` made with it.

Run once, in this checkout, after `benchmarks/peers/setup_state.sh`:

    .venv/bin/python benchmarks/peers/make_state_fixture.py

It writes a small seeded screen (2 cell lines x 2 batches, 6 perturbations, 24 genes, log1p values), trains
arc-state 0.11.1 on it for a few steps (hidden 32, 2 Llama layers, set length 8, the batch encoder on, one-hot
perturbations), then runs `state tx infer` on one line's controls padded with a TSV of requests. The test
`tests/models/test_state_convert.py` converts the run folder without torch and checks that `biojepac predict`
reproduces those predictions. The fixture is a few hundred KB; nothing here runs in CI.
"""

import pathlib
import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
STATE_BIN = HERE / "envs" / "state" / "bin" / "state"
OUT_DPATH = HERE.parents[1] / "tests" / "fixtures" / "state_run"
KEEP = ("config.yaml", "var_dims.pkl", "pert_onehot_map.pt", "batch_onehot_map.torch", "cell_type_onehot_map.torch",
        "checkpoints/final.ckpt")
"""The run folder's files that `state tx infer` reads (the rest, logs and data-module pickles, are left out)."""


def make_screen(seed: int = 0) -> ad.AnnData:
    """Cells of 2 lines x 2 batches: controls plus 6 perturbations, each shifting a few genes."""
    rng = np.random.default_rng(seed)
    n_genes, perts = 24, [f"G{i}" for i in range(6)]
    base = {"lineA": rng.gamma(2.0, 1.0, n_genes), "lineB": rng.gamma(2.0, 1.0, n_genes)}
    effect = {p: np.where(rng.random(n_genes) < 0.3, rng.normal(0, 1.0, n_genes), 0.0) for p in perts}
    rows, xs = [], []
    for ctx in ("lineA", "lineB"):
        for bat in ("b1", "b2"):
            shift = 0.2 if bat == "b2" else 0.0
            for pert, n in [("non-targeting", 40)] + [(p, 12) for p in perts]:
                mean = np.exp(np.log(base[ctx]) + shift + (effect[pert] if pert in effect else 0.0))
                xs.append(np.log1p(rng.poisson(mean, (n, n_genes))).astype(np.float32))
                rows += [(pert, ctx, f"{ctx}_{bat}")] * n
    obs = pd.DataFrame(rows, columns=["target_gene", "context", "batch"]).astype("category")
    obs.index = [f"c{i}" for i in range(len(obs))]
    genes = [f"gene{i}" for i in range(n_genes)]
    out = ad.AnnData(X=np.concatenate(xs), obs=obs, var=pd.DataFrame({"gene_name": genes}, index=genes))
    out.uns["log1p"] = {"base": "e"}
    return out


def main() -> None:
    assert STATE_BIN.exists(), f"no arc-state env ({STATE_BIN}): run benchmarks/peers/setup_state.sh"
    work = pathlib.Path("/tmp/state_fixture_work")
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    screen = make_screen()
    screen.write_h5ad(work / "data" / "train.h5ad")
    toml = work / "split.toml"
    toml.write_text(f'[datasets]\ndata = "{work / "data"}"\n\n[training]\ndata = "train"\n\n[zeroshot]\n\n'
                    '[fewshot]\n[fewshot."data.lineB"]\nval = ["G5"]\ntest = []\n')
    bb = "model.kwargs.transformer_backbone_kwargs"
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin",
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "HOME": str(work)}
    train = [str(STATE_BIN), "tx", "train", f"data.kwargs.toml_config_path={toml}",
             "data.kwargs.pert_col=target_gene", "data.kwargs.batch_col=batch", "data.kwargs.cell_type_key=context",
             "data.kwargs.control_pert=non-targeting", "data.kwargs.output_space=gene", "data.kwargs.num_workers=0",
             "data.kwargs.pin_memory=false", "model=state_sm", "model.kwargs.hidden_dim=32",
             "model.kwargs.cell_set_len=8", "model.kwargs.n_encoder_layers=2", "model.kwargs.n_decoder_layers=2",
             "model.kwargs.batch_encoder=true", "model.device=cpu", f"{bb}.hidden_size=32", f"{bb}.intermediate_size=64",
             f"{bb}.num_hidden_layers=2", f"{bb}.num_attention_heads=4", f"{bb}.num_key_value_heads=4",
             f"{bb}.head_dim=8", f"+{bb}.vocab_size=8", "training.max_steps=30", "training.batch_size=4", "training.lr=3e-3",
             "training.val_freq=30", "training.ckpt_every_n_steps=30", "training.train_seed=0", "training.devices=1",
             "use_wandb=false", "wandb.tags=[]", f"output_dir={work}", "name=run", "overwrite=true"]
    subprocess.run(train, check=True, env=env, cwd=work)
    # Inference input: lineA's controls (both batches) plus a TSV of requested cells, as `state tx infer` takes it.
    ctrl = screen[(screen.obs["target_gene"] == "non-targeting").to_numpy() & (screen.obs["context"] == "lineA").to_numpy()]
    ctrl = ctrl[::2].copy()  # 40 controls: several windows of 8 and a short last one
    ctrl.write_h5ad(work / "infer_in.h5ad")
    pd.DataFrame({"perturbation": ["G1", "G4", "G5"], "num_cells": [11, 8, 5]}).to_csv(work / "infer_req.tsv", sep="\t",
                                                                                      index=False)
    infer = [str(STATE_BIN), "tx", "infer", "--model-dir", str(work / "run"), "--adata", str(work / "infer_in.h5ad"),
             "--output", str(work / "infer_out.h5ad"), "--pert-col", "target_gene", "--celltype-col", "context",
             "--batch-col", "batch", "--control-pert", "non-targeting", "--tsv", str(work / "infer_req.tsv"),
             "--seed", "7", "--quiet"]
    subprocess.run(infer, check=True, env=env, cwd=work)
    shutil.rmtree(OUT_DPATH, ignore_errors=True)
    for name in KEEP:
        (OUT_DPATH / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "run" / name, OUT_DPATH / "run" / name)
    for name in ("infer_in.h5ad", "infer_req.tsv", "infer_out.h5ad"):
        shutil.copy(work / name, OUT_DPATH / name)
    print(f"wrote {OUT_DPATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
