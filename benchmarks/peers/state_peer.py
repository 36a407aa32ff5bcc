"""Run Arc's real STATE (arc-state 0.11.1, `state tx train` / `state tx infer`) on one benchmark task.

STATE lives in its own venv (`setup_state.sh` -> benchmarks/peers/envs/state) and is called as an
external program. Input is a *task folder* written by `biojepac bench` (see `biojepac.bench.write_task`):

    train.h5ad     canonical log1p cells: train + val items and every control (obs `split` says which)
    requests.csv   context,target_gene,n_cells: the held-out perturbations to predict
    features.npz   perturbation features (a biojepac GeneTable) for train and test labels

Output: `pred.h5ad`, canonical (`target_gene`, `context`), predicted cells then the real controls.

How our split maps onto STATE's TOML: one dataset `data` in `[training]`; every context with val items
gets a `[fewshot."data.CTX"]` entry listing them (STATE validates on them, never trains on them). Test
cells are not written at all, so they cannot leak. Perturbation features go in as STATE's
`perturbation_features_file` (a torch dict label -> vector), which is how it can name an unseen gene.
"""

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ENV_DPATH = HERE / "envs" / "state"
STATE_BIN = ENV_DPATH / "bin" / "state"


@dataclasses.dataclass(frozen=True)
class StatePeerConfig:
    max_steps: int = 400
    """`training.max_steps`. 2 CPU cores: a few hundred steps of the reduced model take minutes."""
    hidden_dim: int = 128
    """`model.kwargs.hidden_dim` (ST-SM uses 672)."""
    n_layers: int = 2
    """Transformer layers of the llama backbone (ST-SM: 4)."""
    n_heads: int = 4
    """Attention heads."""
    cell_set_len: int = 32
    """`model.kwargs.cell_set_len`: cells per sentence (ST-SM: 128)."""
    batch_size: int = 8
    """`training.batch_size`: sentences per step."""
    lr: float = 3e-4
    """`training.lr`."""
    seed: int = 0
    """`training.train_seed` and the infer seed."""


def available() -> tuple[bool, str]:
    if not STATE_BIN.exists():
        return False, f"STATE env missing: run benchmarks/peers/setup_state.sh (no {STATE_BIN})"
    return True, ""


def write_toml(task_dpath: pathlib.Path, data_dpath: pathlib.Path, val_by_context: dict[str, list[str]]) -> pathlib.Path:
    lines = ["[datasets]", f'data = "{data_dpath}"', "", "[training]", 'data = "train"', "", "[zeroshot]", "", "[fewshot]"]
    for ctx, perts in sorted(val_by_context.items()):
        quoted = ", ".join(f'"{p}"' for p in perts)
        lines.append(f'[fewshot."data.{ctx}"]\nval = [{quoted}]\ntest = []')
    fpath = task_dpath / "state" / "split.toml"
    fpath.write_text("\n".join(lines) + "\n")
    return fpath


def prepare(task_dpath: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, dict]:
    """STATE inputs: the h5 file (dense X, uns/log1p so STATE knows it is log1p), TOML and features .pt."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    work = task_dpath / "state"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    train = ad.read_h5ad(task_dpath / "train.h5ad")
    x = train.X.toarray() if sp.issparse(train.X) else np.asarray(train.X)
    obs = train.obs[["target_gene", "context", "batch", "split"]].astype(str).astype("category")
    # cell-load reads gene names from var/gene_name (then var/_index).
    genes = np.asarray(train.var_names.astype(str))
    var = pd.DataFrame({"gene_name": genes}, index=pd.Index(list(genes)).rename(None))
    out = ad.AnnData(X=x.astype(np.float32), obs=obs, var=var)
    out.uns["log1p"] = {"base": "e"}
    out.write_h5ad(work / "data" / "train.h5ad")
    val = train.obs[train.obs["split"] == "val"]
    val_by_context = {c: sorted(g["target_gene"].astype(str).unique()) for c, g in val.groupby("context", observed=True)}
    toml_fpath = write_toml(task_dpath, work / "data", val_by_context)
    return work, toml_fpath, {"n_cells": int(out.n_obs), "n_genes": int(out.n_vars)}


def write_features_pt(task_dpath: pathlib.Path, work: pathlib.Path, labels: list[str]) -> pathlib.Path:
    """features.npz (GeneTable) -> STATE's torch dict; run inside STATE's python (it has torch)."""
    fpath = work / "pert_features.pt"
    code = (
        "import json, sys, numpy as np, torch\n"
        "npz = np.load(sys.argv[1]); keys = npz['keys'].tolist(); m = npz['matrix']\n"
        "meta = json.loads(str(npz['meta'])); idx = {k: i for i, k in enumerate(keys)}\n"
        "labels = json.loads(open(sys.argv[2]).read()); out = {}\n"
        "for lab in labels:\n"
        "    parts = [p for p in lab.split('+') if p and p != 'non-targeting']\n"
        "    v = np.zeros(m.shape[1], np.float32)\n"
        "    for p in parts:\n"
        "        if p in idx: v = v + m[idx[p]]\n"
        "    out[lab] = torch.tensor(v)\n"
        "torch.save(out, sys.argv[3])\n"
    )
    import json

    (work / "labels.json").write_text(json.dumps(labels))
    subprocess.run([str(ENV_DPATH / "bin" / "python"), "-c", code, str(task_dpath / "features.npz"),
                    str(work / "labels.json"), str(fpath)], check=True)
    return fpath


def train_args(cfg: StatePeerConfig, toml_fpath: pathlib.Path, features_fpath: pathlib.Path, work: pathlib.Path) -> list[str]:
    head_dim = cfg.hidden_dim // cfg.n_heads
    bb = "model.kwargs.transformer_backbone_kwargs"
    return [
        str(STATE_BIN), "tx", "train",
        f"data.kwargs.toml_config_path={toml_fpath}",
        "data.kwargs.pert_col=target_gene", "data.kwargs.batch_col=batch", "data.kwargs.cell_type_key=context",
        "data.kwargs.control_pert=non-targeting", "data.kwargs.output_space=gene", "data.kwargs.num_workers=0",
        "data.kwargs.pin_memory=false", f"data.kwargs.perturbation_features_file={features_fpath}",
        "model=state_sm", f"model.kwargs.hidden_dim={cfg.hidden_dim}", f"model.kwargs.cell_set_len={cfg.cell_set_len}",
        "model.kwargs.n_encoder_layers=2", "model.kwargs.n_decoder_layers=2", "model.device=cpu",
        f"{bb}.hidden_size={cfg.hidden_dim}", f"{bb}.intermediate_size={4 * cfg.hidden_dim}",
        f"{bb}.num_hidden_layers={cfg.n_layers}", f"{bb}.num_attention_heads={cfg.n_heads}",
        f"{bb}.num_key_value_heads={cfg.n_heads}", f"{bb}.head_dim={head_dim}",
        f"training.max_steps={cfg.max_steps}", f"training.batch_size={cfg.batch_size}", f"training.lr={cfg.lr}",
        f"training.val_freq={max(cfg.max_steps // 2, 1)}", f"training.ckpt_every_n_steps={cfg.max_steps}",
        f"training.train_seed={cfg.seed}", "training.devices=1",
        "use_wandb=false", "wandb.tags=[]", f"output_dir={work}", "name=run", "overwrite=true",
    ]


def infer(work: pathlib.Path, task_dpath: pathlib.Path, cfg: StatePeerConfig, env: dict, log) -> "object":
    """One `state tx infer` per context: that context's controls, padded by a TSV of perturbation,num_cells."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    requests = pd.read_csv(task_dpath / "requests.csv", dtype={"context": str, "target_gene": str})
    data = ad.read_h5ad(work / "data" / "train.h5ad")
    parts = []
    for ctx, req in requests.groupby("context"):
        ctrl = data[(data.obs["target_gene"] == "non-targeting").to_numpy() & (data.obs["context"] == ctx).to_numpy()].copy()
        in_fpath, tsv_fpath, out_fpath = (work / f"infer_{ctx}_{i}" for i in ("in.h5ad", "req.tsv", "out.h5ad"))
        ctrl.write_h5ad(in_fpath)
        req.rename(columns={"target_gene": "perturbation", "n_cells": "num_cells"})[["perturbation", "num_cells"]].to_csv(
            tsv_fpath, sep="\t", index=False)
        cmd = [str(STATE_BIN), "tx", "infer", "--model-dir", str(work / "run"), "--adata", str(in_fpath),
               "--output", str(out_fpath), "--pert-col", "target_gene", "--celltype-col", "context",
               "--batch-col", "batch", "--control-pert", "non-targeting", "--tsv", str(tsv_fpath),
               "--seed", str(cfg.seed), "--quiet"]
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
        out = ad.read_h5ad(out_fpath)
        out.obs = pd.DataFrame({"target_gene": out.obs["target_gene"].astype(str).to_numpy(), "context": ctx},
                               index=[f"{ctx}-{i}" for i in range(out.n_obs)])
        out.X = np.asarray(out.X.toarray() if hasattr(out.X, "toarray") else out.X, np.float32).clip(0)
        parts.append(out)
    pred = ad.concat(parts)
    is_ctrl = (pred.obs["target_gene"] == "non-targeting").to_numpy()
    return pred[np.r_[np.flatnonzero(~is_ctrl), np.flatnonzero(is_ctrl)]].copy()


def run(task_dpath: pathlib.Path, out_fpath: pathlib.Path, cfg: StatePeerConfig = StatePeerConfig()) -> dict:
    """Train and predict; returns timings. Logs go to task_dpath/state/state.log."""
    import pandas as pd

    ok, why = available()
    assert ok, why
    work, toml_fpath, info = prepare(task_dpath)
    import anndata as ad

    labels = sorted(set(ad.read_h5ad(task_dpath / "train.h5ad", backed="r").obs["target_gene"].astype(str))
                    | set(pd.read_csv(task_dpath / "requests.csv")["target_gene"].astype(str)))
    features_fpath = write_features_pt(task_dpath, work, labels)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    with open(work / "state.log", "w") as log:
        t0 = time.perf_counter()
        subprocess.run(train_args(cfg, toml_fpath, features_fpath, work), check=True, env=env, cwd=work,
                       stdout=log, stderr=subprocess.STDOUT)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = infer(work, task_dpath, cfg, env, log)
        infer_s = time.perf_counter() - t0
    pred.uns["biojepac"] = {"model": "STATE (arc-state 0.11.1)", "config": str(dataclasses.asdict(cfg))}
    tmp = out_fpath.with_name(out_fpath.name + ".tmp.h5ad")
    pred.write_h5ad(tmp)
    os.replace(tmp, out_fpath)
    return {"train_s": train_s, "infer_s": infer_s, **info}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task_dpath", type=pathlib.Path)
    parser.add_argument("out_fpath", type=pathlib.Path)
    parser.add_argument("--max-steps", type=int, default=StatePeerConfig.max_steps)
    args = parser.parse_args()
    print(run(args.task_dpath, args.out_fpath, StatePeerConfig(max_steps=args.max_steps)))
    sys.exit(0)
