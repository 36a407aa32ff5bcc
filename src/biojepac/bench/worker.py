"""One (model, task) prediction in its own process, so train time and peak memory are that model's alone.

    python -m biojepac.bench.worker SPEC_JSON

SPEC_JSON names the model, the task, the seed and where to write; the worker fits the model on the
task's training cells, predicts every test item from that context's real controls (through
`biojepac.predict.predict_cells`, as `biojepac predict` does) and writes the prediction plus a JSON of
timings. External peers (STATE, GEARS) are run by `biojepac.bench.peers` instead.
"""

import dataclasses
import json
import pathlib
import sys
import time

import anndata as ad

from biojepac.bench import tasks as tasklib
from biojepac.data import schema

OURS = ("state-st", "state-st-pb", "biojepac")
"""Our trained models; anything else must be a `biojepac.models.baselines.MODELS` kind."""


def make_model(name: str, task: tasklib.Task, spec: dict):
    """A fresh, unfitted model for `name` on `task` (returns the model and its config for the DB)."""
    if name.startswith("state-st"):
        from biojepac.models.state import StateModel
        from biojepac.train.state import PRESETS

        model_cfg, fit_cfg = PRESETS[spec.get("state_preset", "cpu-small")]
        model_cfg = dataclasses.replace(model_cfg, pseudobulk_weight=1.0 if name == "state-st-pb" else 0.0)
        fit_cfg = dataclasses.replace(fit_cfg, n_steps=spec.get("state_steps") or fit_cfg.n_steps, seed=spec["seed"],
                                      run_dpath=pathlib.Path(spec["work_dpath"]) / "run", progress=False)
        cfg = {"model": dataclasses.asdict(model_cfg), "fit": dataclasses.asdict(fit_cfg), "features": task.features.name}
        return StateModel(model_cfg, task.features, fit_cfg), cfg
    if name == "biojepac":
        from biojepac.models.jepa.config import get_preset
        from biojepac.models.jepa.model import BioJepacModel

        cfg = get_preset(spec.get("biojepac_preset", "tiny"))
        return BioJepacModel(cfg, task.features, pathlib.Path(spec["work_dpath"]) / "run"), {
            "preset": spec.get("biojepac_preset", "tiny"), "features": task.features.name}
    from biojepac.models.baselines import MODELS, BaselineConfig

    features_fpath = pathlib.Path(spec["work_dpath"]) / "features.npz"
    task.features.save(features_fpath)
    bcfg = BaselineConfig(features=f"file:{features_fpath}", feature_fallback="cell-mean", combo_fallback="cell-mean")
    return MODELS[name](bcfg), {"baseline": dataclasses.asdict(bcfg), "features": task.features.name}


def run(spec: dict) -> dict:
    from biojepac.predict import predict_cells

    task = tasklib.get_task(spec["task"], pathlib.Path(spec["data_dpath"]), seed=spec["seed"],
                            cache_dpath=pathlib.Path(spec["cache_dpath"]))
    masks = tasklib.fold_masks(task)
    train = task.adata[masks["train"]].copy()
    pathlib.Path(spec["work_dpath"]).mkdir(parents=True, exist_ok=True)
    model, cfg = make_model(spec["model"], task, spec)
    t0 = time.perf_counter()
    model.fit(train)
    train_s = time.perf_counter() - t0
    req = tasklib.requests(task)
    t0 = time.perf_counter()
    parts = [predict_cells(model, train, r[["target_gene", "n_cells"]].reset_index(drop=True), ctx, spec["seed"])
             for ctx, r in req.groupby("context")]
    pred = ad.concat(parts) if len(parts) > 1 else parts[0]
    predict_s = time.perf_counter() - t0
    pred.obs_names_make_unique()
    pred.uns = {}
    out_fpath = pathlib.Path(spec["out_fpath"])
    tmp = out_fpath.with_name(f".{out_fpath.name}.tmp.h5ad")
    pred.write_h5ad(tmp)
    tmp.replace(out_fpath)
    return {"train_s": train_s, "predict_s": predict_s, "config": cfg,
            "n_pred_cells": int((pred.obs[schema.PERT_COL] != schema.CONTROL).sum())}


if __name__ == "__main__":
    spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
    info = run(spec)
    pathlib.Path(spec["info_fpath"]).write_text(json.dumps(info, default=str))
