"""Run the real GEARS (cell-gears 0.1.2, Roohani et al. 2023) on one benchmark task folder.

Runs *inside* GEARS' own venv (`setup_gears.sh` -> benchmarks/peers/envs/gears):

    envs/gears/bin/python gears_peer.py TASK_DPATH OUT_FPATH [--epochs N]

Reads the task folder written by `biojepac bench` (train.h5ad, requests.csv) and writes OUT_FPATH, a
canonical h5ad of predicted cells followed by the real controls.

Choices, said plainly:
- No downloads: `gene2go_all.pkl` (gene -> set of GO ids) is built from the project's offline GO table
  (../shared/data/human_gene_go.tsv.gz) and placed in GEARS' data path before `PertData` starts.
- `default_pert_graph=False`, with `gene_set_path` listing the screen's genes plus every train and test
  target, so an unseen target is a node of GEARS' GO graph (GEARS cannot name a gene outside it).
- One model per context, each in its own working directory. A context with no training perturbations
  (the held-out line) gets a model trained on the other contexts pooled, and its shift is transferred.
- Test cells are never given to GEARS. Its custom split needs a non-empty val and test set: val items are
  used when the context has them, otherwise one training condition is reused for monitoring only.
- GEARS predicts a pseudobulk mean per perturbation, not cells. We expand it to cells as the context's
  real control cells plus the predicted shift (GEARS mean - the mean of GEARS' own controls), clipped
  at 0. Cell-to-cell variance is therefore the controls', which the DE-based metrics (DES, PDS) see.
"""

import argparse
import gzip
import os
import pathlib
import pickle
import shutil
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = pathlib.Path(__file__).resolve().parent
GO_FPATH = HERE.parents[1].parent / "shared" / "data" / "human_gene_go.tsv.gz"
CONTROL = "non-targeting"


def build_gene2go(go_fpath: pathlib.Path, out_fpath: pathlib.Path) -> None:
    """gene symbol -> set of GO ids, the structure GEARS downloads as gene2go_all.pkl."""
    if out_fpath.exists():
        return
    with gzip.open(go_fpath, "rt") as fd:
        df = pd.read_csv(fd, sep="\t", usecols=["symbol", "go_id", "evidence"])
    df = df[df["evidence"] != "ND"]  # ND only points at the root terms
    gene2go = {g: set(ids) for g, ids in df.groupby("symbol")["go_id"]}
    tmp = out_fpath.with_name(out_fpath.name + ".tmp")
    with open(tmp, "wb") as fd:
        pickle.dump(gene2go, fd)
    os.replace(tmp, out_fpath)


def condition(label: str) -> str:
    """Our labels -> GEARS conditions: control 'ctrl', single 'A+ctrl', combination 'A+B'."""
    if label == CONTROL:
        return "ctrl"
    parts = label.split("+")
    return f"{parts[0]}+ctrl" if len(parts) == 1 else "+".join(parts)


def fit_context(train: ad.AnnData, name: str, work: pathlib.Path, gene2go_fpath: pathlib.Path, pert_genes: list[str],
                epochs: int, seed: int):
    """One GEARS model on `train` (cells of one context, or several pooled); returns (model, ctrl mean)."""
    import torch
    from gears import GEARS, PertData

    torch.manual_seed(seed)
    np.random.seed(seed)
    data_dpath = work / name
    shutil.rmtree(data_dpath, ignore_errors=True)
    data_dpath.mkdir(parents=True)
    shutil.copy(gene2go_fpath, data_dpath / "gene2go_all.pkl")
    # GEARS writes (and later silently re-reads) its GO graph at ./data/go_essential_<name>.csv, relative to
    # the working directory: a fresh working directory per model keeps runs from reusing each other's graph.
    (data_dpath / "data").mkdir()
    os.chdir(data_dpath)
    genes = list(map(str, train.var_names))
    with open(data_dpath / "gene_set.pkl", "wb") as fd:
        pickle.dump(sorted(set(genes) | set(pert_genes)), fd)
    x = train.X.toarray() if sp.issparse(train.X) else np.asarray(train.X)
    obs = pd.DataFrame({"condition": [condition(t) for t in train.obs["target_gene"].astype(str)],
                        "cell_type": train.obs["context"].astype(str).to_numpy()}, index=train.obs_names.astype(str))
    gadata = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs, var=pd.DataFrame({"gene_name": genes}, index=genes))
    pert_data = PertData(str(data_dpath), gene_set_path=str(data_dpath / "gene_set.pkl"), default_pert_graph=False)
    pert_data.new_data_process(dataset_name="task", adata=gadata)
    split = train.obs["split"].astype(str).to_numpy()
    conds = obs["condition"].to_numpy()
    train_c = sorted(set(conds[split == "train"]) | {"ctrl"})
    val_c = sorted(set(conds[split == "val"])) or [c for c in train_c if c != "ctrl"][:1]
    split_fpath = data_dpath / "split.pkl"
    with open(split_fpath, "wb") as fd:
        pickle.dump({"train": train_c, "val": val_c, "test": val_c}, fd)  # test = val: GEARS' end-of-run report only
    pert_data.prepare_split(split="custom", split_dict_path=str(split_fpath), seed=seed)
    pert_data.get_dataloader(batch_size=32, test_batch_size=64)
    model = GEARS(pert_data, device="cpu")
    model.model_initialize(hidden_size=64)
    model.train(epochs=epochs, lr=1e-3)
    ctrl_mean = np.asarray(x[conds == "ctrl"].mean(0)).ravel()
    return model, ctrl_mean


def run(task_dpath: pathlib.Path, out_fpath: pathlib.Path, epochs: int, seed: int) -> dict:
    work = task_dpath / "gears"
    work.mkdir(parents=True, exist_ok=True)
    gene2go_fpath = HERE / "envs" / "gears_gene2go_all.pkl"
    build_gene2go(GO_FPATH, gene2go_fpath)
    train = ad.read_h5ad(task_dpath / "train.h5ad")
    requests = pd.read_csv(task_dpath / "requests.csv", dtype={"context": str, "target_gene": str})
    labels = set(train.obs["target_gene"].astype(str)) | set(requests["target_gene"])
    pert_genes = sorted({g for lab in labels if lab != CONTROL for g in lab.split("+")})
    with open(gene2go_fpath, "rb") as fd:
        known = set(pickle.load(fd))
    ctx = train.obs["context"].astype(str).to_numpy()
    is_pert = (train.obs["target_gene"].astype(str) != CONTROL).to_numpy()
    rng = np.random.default_rng(seed)
    blocks, obs_rows, t_train, t_pred = [], [], 0.0, 0.0
    for c, req in requests.groupby("context"):
        has_own = bool((is_pert & (ctx == c)).any())
        fit_cells = train[ctx == c] if has_own else train[ctx != c]  # held-out line: pool the others
        t0 = time.perf_counter()
        model, model_ctrl = fit_context(fit_cells.copy(), f"ctx_{c}", work, gene2go_fpath, pert_genes, epochs, seed)
        t_train += time.perf_counter() - t0
        t0 = time.perf_counter()
        ctrl_x = train[(~is_pert) & (ctx == c)].X
        ctrl_x = ctrl_x.toarray() if sp.issparse(ctrl_x) else np.asarray(ctrl_x)
        predictable = [g for g in req["target_gene"] if all(p in known for p in g.split("+"))]
        means = model.predict([g.split("+") for g in predictable]) if predictable else {}
        for g, n in zip(req["target_gene"], req["n_cells"]):
            key = "_".join(g.split("+"))
            # A target GEARS cannot represent (no GO annotation) is predicted as "no change", and said so.
            shift = means[key] - model_ctrl if key in means else np.zeros(ctrl_x.shape[1])
            pick = rng.choice(len(ctrl_x), size=int(n), replace=int(n) > len(ctrl_x))
            blocks.append(np.clip(ctrl_x[pick] + shift[None, :], 0, None))
            obs_rows.append(pd.DataFrame({"target_gene": g, "context": c, "gears_has_go": key in means}, index=range(int(n))))
        blocks.append(ctrl_x)
        obs_rows.append(pd.DataFrame({"target_gene": CONTROL, "context": c, "gears_has_go": True}, index=range(len(ctrl_x))))
        t_pred += time.perf_counter() - t0
    obs = pd.concat(obs_rows, ignore_index=True)
    obs.index = obs.index.astype(str)
    pred = ad.AnnData(X=np.vstack(blocks).astype(np.float32), obs=obs, var=pd.DataFrame(index=train.var_names.astype(str)))
    pred.uns["biojepac"] = {"model": "GEARS (cell-gears 0.1.2)", "expanded": "controls + predicted pseudobulk shift"}
    tmp = out_fpath.with_name(out_fpath.name + ".tmp.h5ad")
    pred.write_h5ad(tmp)
    os.replace(tmp, out_fpath)
    requested = {g for lab in requests["target_gene"] for g in lab.split("+")}
    return {"train_s": t_train, "infer_s": t_pred, "no_go": sorted(requested - known)}  # predicted as "no change"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task_dpath", type=pathlib.Path)
    parser.add_argument("out_fpath", type=pathlib.Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(run(args.task_dpath, args.out_fpath, args.epochs, args.seed))
    sys.exit(0)
