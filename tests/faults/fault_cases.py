"""The fault table: every case the suite runs, generated from per-input-kind faults x the commands that
read that input, plus per-command option and output faults. `CASES[command]` lists a command's cases."""

from __future__ import annotations

import json
import math
import pathlib
import shutil
from collections import defaultdict

from fault_harness import (
    Case, adata_fault, as_float16, drop_obs, drop_pert, no_cells, no_controls_in, no_genes, only_perturbed,
    raw_fault, rename_cell, rename_gene, reorder_genes, scale_values, set_label, set_value, text_fault,
)

RAW = ("missing", "empty", "text", "truncated", "folder")

# ---- commands reading a screen (the training / source screen), with the output each would write
SCREEN_READERS = {
    "predict": (("predict", "--model", "cell-mean", "--screen", "{screen}", "--context", "c1", "--requests", "{requests}",
                 "--out", "{out}"), "{out}"),
    "train state": (("train", "state", "--screen", "{screen}", "--run-dpath", "{run}", "--preset", "tiny",
                     "--steps-scale", "0.01", "--no-progress", "--features", "onehot"), "{run}/model"),
    "train biojepac": (("train", "biojepac", "--screen", "{screen}", "--run-dpath", "{run}", "--preset", "tiny",
                        "--steps-scale", "0.01", "--no-progress", "--features", "onehot"), "{run}/model"),
    "data split": (("data", "split", "--screen", "{screen}", "--out", "{out_json}"), "{out_json}"),
    "data state-toml": (("data", "state-toml", "--toml", "{toml}", "--screen", "{screen}", "--out", "{out_json}"), "{out_json}"),
    "data prepare-ooc": (("data", "prepare-ooc", "--screen", "{screen}", "--out", "{out}"), "{out}"),
    "features check": (("features", "check", "--screen", "{screen}", "--features", "onehot", "--out", "{out_json}"), "{out_json}"),
    "evaluate": (("evaluate", "--pred", "{pred}", "--real", "{real}", "--screen", "{screen}", "--out-dpath", "{out_dpath}",
                  "--profile", "vcc", "--n-boot", "10", "--no-plots"), "{out_dpath}"),
}
OBS_ONLY = ("data split", "data state-toml")
"""Commands that read only the screen's obs: expression faults do not concern them."""

SCREEN_FAULTS = [  # (name, setup maker, extra tokens, rc, reads X)
    *[(f"screen:{k}", lambda k=k: raw_fault("screen", k), (), 2, False) for k in RAW],
    ("screen:no-pert-column", lambda: adata_fault("screen", drop_obs("target_gene")), ("target_gene",), 2, False),
    ("screen:nan-label", lambda: adata_fault("screen", set_label("target_gene", 9, math.nan)), ("target_gene",), 2, False),
    ("screen:no-controls", lambda: adata_fault("screen", only_perturbed), ("non-targeting",), 2, False),
    ("screen:context-without-controls", lambda: adata_fault("screen", no_controls_in("c2")), ("c2",), 2, False),
    ("screen:duplicate-cell", lambda: adata_fault("screen", rename_cell(5, "cell4")), ("cell4",), 2, False),
    ("screen:no-cells", lambda: adata_fault("screen", no_cells), (), 2, False),
    ("screen:duplicate-gene", lambda: adata_fault("screen", rename_gene(6, "G005")), ("G005",), 2, True),
    ("screen:empty-gene-name", lambda: adata_fault("screen", rename_gene(6, " ")), ("gene",), 2, True),
    ("screen:no-genes", lambda: adata_fault("screen", no_genes), (), 2, True),
    ("screen:nan", lambda: adata_fault("screen", set_value(math.nan)), ("G003",), 2, True),
    ("screen:inf", lambda: adata_fault("screen", set_value(math.inf)), ("G003",), 2, True),
    ("screen:negative", lambda: adata_fault("screen", set_value(-2.0)), ("G003",), 2, True),
    ("screen:neither-counts-nor-log1p", lambda: adata_fault("screen", scale_values(10.0)), (), 2, True),
    ("screen:float16", lambda: adata_fault("screen", as_float16), (), None, True),
]

# ---- commands reading a prediction-like file (predicted or real cells)
PRED_READERS = {
    "evaluate:pred": ("evaluate", "pred", ("evaluate", "--pred", "{pred}", "--real", "{real}", "--out-dpath", "{out_dpath}",
                                           "--profile", "vcc", "--n-boot", "10", "--no-plots"), "{out_dpath}"),
    "evaluate:real": ("evaluate", "real", ("evaluate", "--pred", "{pred}", "--real", "{real}", "--out-dpath", "{out_dpath}",
                                           "--profile", "vcc", "--n-boot", "10", "--no-plots"), "{out_dpath}"),
    "submit": ("submit", "pred", ("submit", "--pred", "{pred}", "--genes", "{genes}", "--out", "{out_vcc}",
                                  "--expected-gene-dim", "-1"), "{out_vcc}"),
}
PRED_FAULTS = [  # (name, mutate or raw kind, tokens, rc for evaluate, rc for submit)
    *[(k, k, (), 2, 2) for k in RAW],
    ("nan", set_value(math.nan), ("G003",), 2, 2),
    ("inf", set_value(math.inf), ("G003",), 2, 2),
    ("negative", set_value(-1.0), ("G003",), 2, 2),
    ("float16", as_float16, (), None, None),
    ("neither-counts-nor-log1p", scale_values(10.0), (), 2, 2),
    ("no-controls", only_perturbed, ("non-targeting",), 2, 2),
    ("no-pert-column", drop_obs("target_gene"), ("target_gene",), 2, 2),
    ("nan-label", set_label("target_gene", 9, math.nan), ("target_gene",), 2, 2),
    ("empty-label", set_label("target_gene", 9, ""), ("target_gene",), 2, 2),
    ("genes-reordered", reorder_genes, ("order",), 2, 0),
    ("gene-renamed", rename_gene(6, "XYZ"), ("XYZ",), 2, 2),
    ("duplicate-gene", rename_gene(6, "G005"), ("G005",), 2, 2),
    ("perturbation-missing", drop_pert("G002"), ("G002",), 2, 0),
    ("no-cells", no_cells, (), 2, 2),
    ("no-genes", no_genes, (), 2, 2),
]

PREDICT = ("predict", "--model", "cell-mean", "--screen", "{screen}", "--context", "c1", "--out", "{out}")
REQUEST_FAULTS = [  # (name, CSV text, tokens, rc)
    ("requests:header-only", "target_gene,n_cells\n", (), 2),
    ("requests:no-n_cells-column", "target_gene,count\nG001,5\n", ("n_cells",), 2),
    ("requests:no-target_gene-column", "gene,n_cells\nG001,5\n", ("target_gene",), 2),
    ("requests:semicolons", "target_gene;n_cells\nG001;5\n", ("n_cells",), 2),
    ("requests:blank-gene", "target_gene,n_cells\n,5\nG001,3\n", ("target_gene",), 2),
    ("requests:zero-cells", "target_gene,n_cells\nG001,0\n", ("n_cells", "G001"), 2),
    ("requests:negative-cells", "target_gene,n_cells\nG001,-3\n", ("n_cells", "G001"), 2),
    ("requests:fractional-cells", "target_gene,n_cells\nG001,2.5\n", ("n_cells", "G001"), 2),
    ("requests:text-cells", "target_gene,n_cells\nG001,many\n", ("n_cells", "G001"), 2),
    ("requests:blank-cells", "target_gene,n_cells\nG001,\n", ("n_cells", "G001"), 2),
    ("requests:duplicate-gene", "target_gene,n_cells\nG001,5\nG001,3\n", ("G001",), 2),
    ("requests:only-controls", "target_gene,n_cells\nnon-targeting,5\n", (), 2),
    ("requests:too-many-cells", "target_gene,n_cells\nG001,1000000000000\n", ("n_cells", "G001"), 2),
    ("requests:binary", b"\x00\xff\xfe\x00\x81garbage\x00", (), 2),
    ("requests:utf16", "target_gene,n_cells\nG001,5\n".encode("utf-16"), (), None),
    ("requests:extra-columns-ok", "target_gene,n_cells,median_umi\nG001,5,1000\n", (), 0),
]


def _split_json(mutate):
    def text():
        from fault_harness import GENES  # noqa: F401  (keeps the import graph obvious)

        raw = {"name": "s", "kind": "unseen_perturbation", "seed": 0, "params": {},
               "train": [["c1", "G000"], ["c2", "G000"], ["c1", "G001"]], "val": [["c1", "G003"]], "test": [["c1", "G002"]]}
        return json.dumps(mutate(raw))

    return text


SPLIT_FAULTS = [  # (name, JSON text, tokens)
    ("split:flat-list", '["G001", "G002"]', ()),
    ("split:not-json", "{train: G001", ()),
    ("split:missing-train", _split_json(lambda r: {k: v for k, v in r.items() if k != "train"})(), ("train",)),
    ("split:unknown-kind", _split_json(lambda r: {**r, "kind": "random"})(), ("random",)),
    ("split:leak", _split_json(lambda r: {**r, "test": [["c1", "G001"]]})(), ("G001",)),
    ("split:unknown-perturbation", _split_json(lambda r: {**r, "test": [["c1", "NOPE"]]})(), ("NOPE",)),
    ("split:unknown-context", _split_json(lambda r: {**r, "test": [["c9", "G002"]]})(), ("c9",)),
    ("split:no-train-perturbations", _split_json(lambda r: {**r, "train": []})(), ()),
    ("split:items-not-pairs", _split_json(lambda r: {**r, "train": ["G000", "G001"]})(), ()),
    ("split:train-not-list", _split_json(lambda r: {**r, "train": 5})(), ("train",)),
]


def model_fault(edit):
    """Copy the world's saved model into the case folder and break it with `edit(dpath)`."""

    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        dst = case_dpath / "bad_model"
        shutil.copytree(paths["model"], dst)
        edit(dst)
        return {"model": str(dst)}

    return setup


def edit_meta(change):
    def edit(dpath):
        meta = json.loads((dpath / "model.json").read_text())
        (dpath / "model.json").write_text(json.dumps(change(meta)))

    return edit


def _truncate(fpath: pathlib.Path):
    data = fpath.read_bytes()
    fpath.write_bytes(data[: len(data) // 3])


MODEL_FAULTS = [  # (name, setup, tokens, use a broken screen too)
    ("model:no-model.json", model_fault(lambda d: (d / "model.json").unlink()), ("model.json",), None),
    ("model:malformed-json", model_fault(lambda d: (d / "model.json").write_text('{"kind": ')), ("model.json",), None),
    ("model:json-list", model_fault(lambda d: (d / "model.json").write_text("[1, 2]")), ("model.json",), None),
    ("model:loader-field", model_fault(edit_meta(lambda m: {**m, "loader": "os:system"})), ("loader",), None),
    ("model:old-format", model_fault(edit_meta(lambda m: {**m, "format_version": 1})), ("format_version",), None),
    ("model:unknown-kind", model_fault(edit_meta(lambda m: {**m, "kind": "mystery"})), ("mystery",), None),
    ("model:no-genes-field", model_fault(edit_meta(lambda m: {k: v for k, v in m.items() if k != "genes"})), ("genes",), None),
    ("model:genes-not-list", model_fault(edit_meta(lambda m: {**m, "genes": 5})), ("genes",), None),
    ("model:unknown-config-key", model_fault(edit_meta(lambda m: {**m, "config": {**m["config"], "bogus": 1}})), ("bogus",), None),
    ("model:config-not-dict", model_fault(edit_meta(lambda m: {**m, "config": [1]})), ("config",), None),
    ("model:truncated-weights", model_fault(lambda d: _truncate(d / "state.npz")), ("weights", "npz"), None),
    ("model:missing-weights", model_fault(lambda d: (d / "state.npz").unlink()), ("state.npz",), None),
    ("model:screen-genes-reordered", None, ("order",), reorder_genes),
    ("model:screen-gene-renamed", None, ("XYZ",), rename_gene(6, "XYZ")),
    ("model:screen-gene-missing", None, ("G039",), lambda a: a[:, :-1].copy()),
]


def _out_is(kind: str, key: str):
    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        dst = pathlib.Path(paths[key])
        if kind == "folder":
            dst.mkdir(parents=True)
            (dst / "keep.txt").write_text("x")
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text("x")
        return {}

    return setup


# ---- option and output faults per command: (command, name, argv, tokens, setup, parse_error)
TRAIN_STATE = SCREEN_READERS["train state"][0]
TRAIN_JEPA = SCREEN_READERS["train biojepac"][0]
EVALUATE = SCREEN_READERS["evaluate"][0][:5] + ("--out-dpath", "{out_dpath}", "--profile", "vcc", "--no-plots")
SUBMIT = PRED_READERS["submit"][2]
SPLIT = ("data", "split", "--screen", "{screen}", "--out", "{out_json}")
OOC = ("data", "prepare-ooc", "--screen", "{screen}", "--out", "{out}")
STREAM = ("train", "stream-pretrain", "--run-dpath", "{run}", "--preset", "tiny", "--steps-scale", "0.01", "--no-progress")
CHECK = ("features", "check", "--screen", "{screen}", "--features", "onehot")
SSTREAM = ("train", "state-stream", "--run-dpath", "{run}", "--preset", "tiny", "--steps-scale", "0.01", "--no-progress",
           "--features", "onehot", "--set-size", "4")
COMBINE = ("data", "combine", "--screens", "a={screen}", "b={screen}", "--out", "{out}", "--no-checksum")
FETCH = ("data", "fetch", "replogle22_rpe1", "--data-dpath", "{tmp}/data", "--timeout-s", "0.1")
DEMO = ("demo", "--out-dpath", "{out_dpath}", "--screen-preset", "tiny", "--models", "control-mean", "--steps-scale", "0.01")
BENCH = ("bench", "--db", "{tmp}/b.sqlite", "--out-dpath", "{tmp}/lb", "--cache-dpath", "{tmp}/cache", "--data-dpath", "{tmp}/data",
         "--models", "cell-mean", "--tasks", "synthetic-unseen-pert")
SYNTH = ("data", "synth", "--out", "{out}", "--screen-preset", "tiny")
PREPARE = ("data", "prepare", "replogle22_rpe1", "--data-dpath", "{tmp}/data")

def _out_is_after_run(kind: str):
    """The arc-state run copied in place, and --out already a file / a folder of someone else's files."""

    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        return {**_state_run()(case_dpath, paths), **_out_is(kind, "out_dpath")(case_dpath, paths)}

    return setup


def _raw_file_in_place(kind: str):
    """A dataset's raw file already in the cache (`data fetch` then only verifies it): the world's screen, broken."""

    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        dst = case_dpath / "data" / "replogle22_rpe1" / "raw" / "rpe1_raw_singlecell_01.h5ad"
        dst.parent.mkdir(parents=True)
        data = pathlib.Path(paths["screen"]).read_bytes()
        dst.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"<html>rate limited</html>")
        return {"raw": str(dst)}

    return setup


STATE_RUN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "state_run" / "run"
"""A tiny arc-state ST run folder (committed for the converter's tests)."""
CONVERT = ("convert", "state-checkpoint", "--run-dpath", "{strun}", "--out", "{out_dpath}")


def _state_run(edit=None, out_model: bool = False):
    """A copy of the arc-state run folder, broken by `edit(dpath)`; `out_model`: a saved model already at --out."""

    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        dst = case_dpath / "strun"
        shutil.copytree(STATE_RUN, dst)
        if edit is not None:
            edit(dst)
        if out_model:
            shutil.copytree(paths["model"], paths["out_dpath"])
        return {"strun": str(dst)}

    return setup


SHARD_FAULTS = [  # (name, argv tail, tokens, setup): the shards both streamed trainers read (data.stream)
    ("no shards", (), ("--shards",), None),
    ("shard missing", ("--shards", "{tmp}/nope.h5ad"), ("nope.h5ad",), None),
    ("shard not h5ad", ("--shards", "{shard}"), ("{shard}",), raw_fault("shard", "text")),
    ("shard truncated", ("--shards", "{shard}"), ("{shard}",), raw_fault("shard", "truncated")),
    ("shard empty", ("--shards", "{shard}"), ("{shard}",), raw_fault("shard", "empty")),
    ("shard NaN", ("--shards", "{shard}"), ("{shard}", "G003"), adata_fault("shard", lambda a: _csr(set_value(math.nan)(a)))),
    ("shard inf", ("--shards", "{shard}"), ("{shard}", "G003"), adata_fault("shard", lambda a: _csr(set_value(math.inf)(a)))),
    ("shard negative", ("--shards", "{shard}"), ("{shard}", "G003"), adata_fault("shard", lambda a: _csr(set_value(-1.0)(a)))),
    ("shard duplicate genes", ("--shards", "{shard}"), ("{shard}", "G005"), adata_fault("shard", rename_gene(6, "G005"))),
]
STREAMED = {"train stream-pretrain": STREAM, "train state-stream": SSTREAM}

OPTION_FAULTS = [
    *[(command, name, (*argv, *tail), tokens, setup) for command, argv in STREAMED.items() for name, tail, tokens, setup in SHARD_FAULTS],
    ("predict", "--n-cells 0", (*PREDICT, "--perturbations", "G001", "--n-cells", "0"), ("--n-cells",)),
    ("predict", "--n-cells -2", (*PREDICT, "--perturbations", "G001", "--n-cells", "-2"), ("--n-cells",)),
    ("predict", "--max-controls -1", (*PREDICT, "--requests", "{requests}", "--max-controls", "-1"), ("--max-controls",)),
    ("predict", "--seed -1", (*PREDICT, "--requests", "{requests}", "--seed", "-1"), ("--seed",)),
    ("predict", "unknown context", (*PREDICT[:6], "nowhere", *PREDICT[7:], "--requests", "{requests}"), ("nowhere",)),
    ("predict", "unknown model", ("predict", "--model", "bogus", *PREDICT[3:], "--requests", "{requests}"), ("bogus",)),
    ("predict", "no requests", PREDICT, ("--requests",)),
    ("predict", "perturbation without features", ("predict", "--model", "linear", *PREDICT[3:], "--perturbations", "NOPE", "--features", "onehot"),
     ("NOPE",)),
    ("predict", "--out is a folder", (*PREDICT, "--requests", "{requests}"), ("{out}",), _out_is("folder", "out")),
    ("evaluate", "--n-boot 0", (*EVALUATE, "--n-boot", "0"), ("--n-boot",)),
    ("evaluate", "--n-boot -5", (*EVALUATE, "--n-boot", "-5"), ("--n-boot",)),
    ("evaluate", "--seed -1", (*EVALUATE, "--n-boot", "10", "--seed", "-1"), ("--seed",)),
    ("evaluate", "--pert-col absent", (*EVALUATE, "--n-boot", "10", "--pert-col", "nope"), ("nope",)),
    ("evaluate", "--control absent", (*EVALUATE, "--n-boot", "10", "--control", "nope"), ("nope",)),
    ("evaluate", "--baseline and --screen", (*EVALUATE, "--n-boot", "10", "--baseline", "{pred}", "--screen", "{screen}"), ("baseline",)),
    ("evaluate", "--out-dpath is a file", (*EVALUATE, "--n-boot", "10"), ("{out_dpath}",), _out_is("file", "out_dpath")),
    ("evaluate", "--baseline missing", (*EVALUATE, "--n-boot", "10", "--baseline", "{tmp}/nope.h5ad"), ("nope.h5ad",)),
    ("submit", "--block-rows 0", (*SUBMIT, "--block-rows", "0"), ("--block-rows",)),
    ("submit", "--encoding 16", (*SUBMIT, "--encoding", "16"), ("encoding",), None, True),
    ("submit", "--pert-col absent", (*SUBMIT, "--pert-col", "nope"), ("nope",)),
    ("submit", "--control absent", (*SUBMIT, "--control", "nope"), ("nope",)),
    ("submit", "--celltype-col absent", (*SUBMIT, "--celltype-col", "nope"), ("nope",)),
    ("submit", "--max-cell-dim 0", (*SUBMIT, "--max-cell-dim", "0"), ("--max-cell-dim",)),
    ("submit", "--out is a folder", SUBMIT, ("{out_vcc}",), _out_is("folder", "out_vcc")),
    ("submit", "gene list missing", (*SUBMIT[:4], "{tmp}/nope.csv", *SUBMIT[5:]), ("nope.csv",)),
    ("submit", "gene list empty", SUBMIT, ("{genes}",), text_fault("genes", "")),
    ("submit", "gene list duplicate", SUBMIT, ("G001", "{genes}"), text_fault("genes", "G000\nG001\nG001\n")),
    ("submit", "gene list binary", SUBMIT, ("{genes}",), text_fault("genes", b"\x00\xff\xfe\x00")),
    ("data split", "--fractions 1.2 -0.1 -0.1", (*SPLIT, "--fractions", "1.2", "-0.1", "-0.1"), ("--fractions",)),
    ("data split", "--fractions sum 0.9", (*SPLIT, "--fractions", "0.5", "0.2", "0.2"), ("--fractions",)),
    ("data split", "--fractions 0 0 1", (*SPLIT, "--fractions", "0", "0", "1"), ("--fractions",)),
    ("data split", "--k -1", (*SPLIT, "--kind", "fewshot_context", "--context", "c2", "--k", "-1"), ("--k",)),
    ("data split", "--val-fraction 1.5", (*SPLIT, "--kind", "fewshot_context", "--context", "c2", "--val-fraction", "1.5"), ("--val-fraction",)),
    ("data split", "fewshot without --context", (*SPLIT, "--kind", "fewshot_context"), ("--context",)),
    ("data split", "unknown --context", (*SPLIT, "--context", "nowhere"), ("nowhere",)),
    ("data split", "--seed -1", (*SPLIT, "--seed", "-1"), ("--seed",)),
    ("data split", "--out is a folder", SPLIT, ("{out_json}",), _out_is("folder", "out_json")),
    ("data split", "--kind bogus", (*SPLIT, "--kind", "bogus"), ("kind",), None, True),
    ("data prepare-ooc", "--ooc.chunk-rows 0", (*OOC, "--ooc.chunk-rows", "0"), ("--ooc.chunk-rows",)),
    ("data prepare-ooc", "--ooc.n-top-genes -5", (*OOC, "--ooc.n-top-genes", "-5"), ("--ooc.n-top-genes",)),
    ("data prepare-ooc", "--ooc.n-workers 0", (*OOC, "--ooc.n-workers", "0"), ("--ooc.n-workers",)),
    ("data prepare-ooc", "--ooc.target -1", (*OOC, "--ooc.target", "-1"), ("target",)),
    ("data prepare-ooc", "--ooc.out-chunk-nnz 0", (*OOC, "--ooc.out-chunk-nnz", "0"), ("--ooc.out-chunk-nnz",)),
    ("data prepare-ooc", "--ooc.pseudobulk-keys absent", (*OOC, "--ooc.pseudobulk-keys", "nope"), ("nope",)),
    ("data prepare-ooc", "--out is a folder", OOC, ("{out}",), _out_is("folder", "out")),
    ("data synth", "--n-combos -1", (*SYNTH, "--n-combos", "-1"), ("--n-combos",)),
    ("data synth", "--seed -1", (*SYNTH, "--seed", "-1"), ("--seed",)),
    ("data synth", "--out is a folder", SYNTH, ("{out}",), _out_is("folder", "out")),
    ("data prepare", "--max-cells-per-pert -1", (*PREPARE, "--max-cells-per-pert", "-1"), ("--max-cells-per-pert",)),
    ("data prepare", "--n-hvg -5", (*PREPARE, "--n-hvg", "-5"), ("--n-hvg",)),
    ("data prepare", "--target abc", (*PREPARE, "--target", "abc"), ("target",)),
    ("data prepare", "not fetched", PREPARE, ("replogle22_rpe1",)),
    ("data state-toml", "toml missing", ("data", "state-toml", "--toml", "{tmp}/nope.toml", "--screen", "{screen}", "--out", "{out_json}"),
     ("nope.toml",)),
    ("data state-toml", "toml malformed", ("data", "state-toml", "--toml", "{toml}", "--screen", "{screen}", "--out", "{out_json}"),
     ("{toml}",), text_fault("toml", "[datasets\nscreen = ")),
    ("data state-toml", "unknown cell type", ("data", "state-toml", "--toml", "{toml}", "--screen", "{screen}", "--out", "{out_json}"),
     ("c9",), text_fault("toml", '[datasets]\nscreen = "x"\n[zeroshot]\n"screen.c9" = "test"\n')),
    ("train state", "--steps-scale 0", (*TRAIN_STATE, "--steps-scale", "0"), ("--steps-scale",)),
    ("train state", "--steps-scale -1", (*TRAIN_STATE, "--steps-scale", "-1"), ("--steps-scale",)),
    ("train state", "--set-size -1", (*TRAIN_STATE, "--set-size", "-1"), ("--set-size",)),
    ("train state", "--seed -1", (*TRAIN_STATE, "--seed", "-1"), ("--seed",)),
    ("train state", "--pseudobulk-weight -1", (*TRAIN_STATE, "--pseudobulk-weight", "-1"), ("--pseudobulk-weight",)),
    ("train state", "unknown features", (*TRAIN_STATE, "--features", "bogus:x"), ("bogus",)),
    ("train state", "--encoder missing", (*TRAIN_STATE, "--encoder", "{tmp}/nope"), ("nope",)),
    ("train state", "--run-dpath is a file", TRAIN_STATE, ("{run}",), _out_is("file", "run")),
    ("train state", "--preset huge", (*TRAIN_STATE, "--preset", "huge"), ("preset",), None, True),
    ("train biojepac", "--steps-scale 0", (*TRAIN_JEPA, "--steps-scale", "0"), ("--steps-scale",)),
    ("train biojepac", "--steps-scale -1", (*TRAIN_JEPA, "--steps-scale", "-1"), ("--steps-scale",)),
    ("train biojepac", "--seed -1", (*TRAIN_JEPA, "--seed", "-1"), ("--seed",)),
    ("train biojepac", "unknown features", (*TRAIN_JEPA, "--features", "bogus:x"), ("bogus",)),
    ("train biojepac", "--run-dpath is a file", TRAIN_JEPA, ("{run}",), _out_is("file", "run")),
    ("train biojepac", "later stage first", (*TRAIN_JEPA, "--stage", "decode"), ("{run}",)),
    ("train stream-pretrain", "--batch-size -1", (*STREAM, "--shards", "{shard}", "--batch-size", "-1"), ("--batch-size",)),
    ("train stream-pretrain", "--grad-accum 0", (*STREAM, "--shards", "{shard}", "--grad-accum", "0"), ("--grad-accum",)),
    ("train stream-pretrain", "--block-rows 0", (*STREAM, "--shards", "{shard}", "--block-rows", "0"), ("--block-rows",)),
    ("train stream-pretrain", "--window-blocks 0", (*STREAM, "--shards", "{shard}", "--window-blocks", "0"), ("--window-blocks",)),
    ("train stream-pretrain", "--ckpt-every 0", (*STREAM, "--shards", "{shard}", "--ckpt-every", "0"), ("--ckpt-every",)),
    ("train stream-pretrain", "--n-tokens -1", (*STREAM, "--shards", "{shard}", "--n-tokens", "-1"), ("--n-tokens",)),
    ("train stream-pretrain", "--steps-scale 0", (*STREAM, "--shards", "{shard}", "--steps-scale", "0"), ("--steps-scale",)),
    ("train state-stream", "shards of other genes", (*SSTREAM, "--shards", "{shard}", "{pred}"), ("{pred}",),
     adata_fault("pred", rename_gene(6, "XYZ"))),
    ("train state-stream", "expression features", (*SSTREAM, "--shards", "{shard}", "--features", "expr"), ("--features",)),
    ("train state-stream", "--steps-scale 0", (*SSTREAM, "--shards", "{shard}", "--steps-scale", "0"), ("--steps-scale",)),
    ("train state-stream", "--set-size -1", (*SSTREAM, "--shards", "{shard}", "--set-size", "-1"), ("--set-size",)),
    ("train state-stream", "--seed -1", (*SSTREAM, "--shards", "{shard}", "--seed", "-1"), ("--seed",)),
    ("train state-stream", "--block-rows 0", (*SSTREAM, "--shards", "{shard}", "--block-rows", "0"), ("--block-rows",)),
    ("train state-stream", "--window-blocks 0", (*SSTREAM, "--shards", "{shard}", "--window-blocks", "0"), ("--window-blocks",)),
    ("train state-stream", "--run-dpath is a file", (*SSTREAM, "--shards", "{shard}"), ("{run}",), _out_is("file", "run")),
    ("data combine", "screen missing", (*COMBINE[:4], "b={tmp}/nope.h5ad", *COMBINE[5:]), ("nope.h5ad",)),
    ("data combine", "screen not h5ad", COMBINE, ("{screen}",), raw_fault("screen", "text")),
    ("data combine", "screen truncated", COMBINE, ("{screen}",), raw_fault("screen", "truncated")),
    ("data combine", "screen NaN", COMBINE, ("{screen}", "G003"), adata_fault("screen", set_value(math.nan))),
    ("data combine", "screen inf", COMBINE, ("{screen}", "G003"), adata_fault("screen", set_value(math.inf))),
    ("data combine", "screen negative", COMBINE, ("{screen}", "G003"), adata_fault("screen", set_value(-1.0))),
    ("data combine", "log1p screen, total unknown", (*COMBINE[:4], "b={real}", *COMBINE[5:]), ("{real}", "--log1p-targets")),
    ("data combine", "screen duplicate genes", COMBINE, ("{screen}", "G005"), adata_fault("screen", rename_gene(6, "G005"))),
    ("data combine", "screen no pert column", COMBINE, ("{screen}", "target_gene"), adata_fault("screen", drop_obs("target_gene"))),
    ("data combine", "screen without NAME=", (*COMBINE[:4], "{screen}", *COMBINE[5:]), ("{screen}",)),
    ("data combine", "one name twice", (*COMBINE[:4], "a={screen}", *COMBINE[5:]), ("a",)),
    ("data combine", "no screens", ("data", "combine", "--out", "{out}"), ("--screens",)),
    ("data combine", "--chunk-rows 0", (*COMBINE, "--chunk-rows", "0"), ("--chunk-rows",)),
    ("data combine", "--gene-space bogus", (*COMBINE, "--gene-space", "bogus"), ("bogus",)),
    ("data combine", "--out is a folder", COMBINE, ("{out}",), _out_is("folder", "out")),
    ("data combine", "--shard-cells -1", (*COMBINE, "--shard-cells", "-1"), ("--shard-cells",)),
    ("data combine", "--shard-cells, --out is a file", (*COMBINE, "--shard-cells", "5"), ("{out}",), _out_is("file", "out")),
    ("data combine", "--shard-cells, --out holds other files", (*COMBINE, "--shard-cells", "5"), ("{out}", "keep.txt"),
     _out_is("folder", "out")),
    ("data fetch", "truncated file in place", FETCH, ("{raw}",), _raw_file_in_place("truncated")),
    ("data fetch", "html page in place", FETCH, ("{raw}",), _raw_file_in_place("html")),
    ("data fetch", "user-supplied file missing", ("data", "fetch", "vcc25_h1", "--data-dpath", "{tmp}/data"), ("adata_Training.h5ad",)),
    ("data fetch", "unknown dataset", ("data", "fetch", "nosuch"), ("nosuch",), None, True),
    ("convert state-checkpoint", "run folder missing", (*CONVERT[:3], "{tmp}/nope", *CONVERT[4:]), ("nope",)),
    ("convert state-checkpoint", "checkpoint truncated", CONVERT, ("final.ckpt",), _state_run(lambda d: _truncate(d / "checkpoints" / "final.ckpt"))),
    ("convert state-checkpoint", "perturbation map missing", CONVERT, ("pert_onehot_map.pt",),
     _state_run(lambda d: (d / "pert_onehot_map.pt").unlink())),
    ("convert state-checkpoint", "var_dims missing", CONVERT, ("var_dims.pkl",), _state_run(lambda d: (d / "var_dims.pkl").unlink())),
    ("convert state-checkpoint", "--out is a file", CONVERT, ("{out_dpath}",), _out_is_after_run("file")),
    ("convert state-checkpoint", "--out holds other files", CONVERT, ("{out_dpath}",), _out_is_after_run("folder")),
    ("features check", "--n-neighbours 0", (*CHECK, "--n-neighbours", "0"), ("--n-neighbours",)),
    ("features check", "--n-genes -1", (*CHECK, "--n-genes", "-1"), ("--n-genes",)),
    ("features check", "unknown features", (*CHECK[:4], "--features", "bogus:x"), ("bogus",)),
    ("demo", "--n-boot 0", (*DEMO, "--n-boot", "0"), ("--n-boot",)),
    ("demo", "--steps-scale 0", (*DEMO, "--steps-scale", "0"), ("--steps-scale",)),
    ("demo", "--seed -1", (*DEMO, "--seed", "-1"), ("--seed",)),
    ("demo", "--out-dpath is a file", DEMO, ("{out_dpath}",), _out_is("file", "out_dpath")),
    ("bench", "unknown model", (*BENCH, "--models", "nosuch"), ("nosuch",)),
    ("bench", "unknown task", (*BENCH, "--tasks", "nosuch"), ("nosuch",)),
    ("bench", "--n-boot 0", (*BENCH, "--n-boot", "0"), ("--n-boot",)),
    ("bench", "--steps-scale 0", (*BENCH, "--steps-scale", "0"), ("--steps-scale",)),
    ("bench", "--leaderboard-only, no database", (*BENCH, "--leaderboard-only"), ("b.sqlite",)),
]


def _csr(adata):
    import scipy.sparse as sp

    adata.X = sp.csr_matrix(adata.X)
    return adata


def _model_screen_fault(mutate):
    def setup(case_dpath, paths):
        return adata_fault("screen", mutate)(case_dpath, paths)

    return setup


def build_cases() -> dict[str, list[Case]]:
    cases: dict[str, list[Case]] = defaultdict(list)
    for command, (argv, out) in SCREEN_READERS.items():
        for name, make_setup, tokens, rc, reads_x in SCREEN_FAULTS:
            if reads_x and command in OBS_ONLY:
                continue
            if rc is None and command.startswith("train"):
                continue  # an accepted screen means a training run (minutes under load); predict reads it the same way
            cases[command].append(Case(command, name, argv, ("{screen}", *tokens), rc, make_setup(), out))
    for label, (command, key, argv, out) in PRED_READERS.items():
        for name, fault, tokens, rc_eval, rc_submit in PRED_FAULTS:
            setup = raw_fault(key, fault) if isinstance(fault, str) else adata_fault(key, fault)
            rc = rc_submit if command == "submit" else rc_eval
            cases[command].append(Case(command, f"{key}:{name}", argv, (f"{{{key}}}", *tokens) if rc else (), rc, setup, out))
    for kind in RAW:
        cases["predict"].append(Case("predict", f"requests:{kind}", (*PREDICT, "--requests", "{requests}"), ("{requests}",), 2,
                                     raw_fault("requests", kind)))
    for name, text, tokens, rc in REQUEST_FAULTS:
        cases["predict"].append(Case("predict", name, (*PREDICT, "--requests", "{requests}"),
                                     ("{requests}", *tokens) if rc else (), rc, text_fault("requests", text)))
    for kind in RAW:
        cases["predict"].append(Case("predict", f"split:{kind}", (*PREDICT, "--requests", "{requests}", "--split", "{split}"),
                                     ("{split}",), 2, raw_fault("split", kind)))
    for name, text, tokens in SPLIT_FAULTS:
        cases["predict"].append(Case("predict", name, (*PREDICT, "--requests", "{requests}", "--split", "{split}"),
                                     ("{split}", *tokens), 2, text_fault("split", text)))
    saved = ("predict", "--model", "{model}", *PREDICT[3:], "--requests", "{requests}")
    for name, setup, tokens, screen_mutate in MODEL_FAULTS:
        if screen_mutate is not None:
            setup, tokens = _model_screen_fault(screen_mutate), ("{screen}", "{model}", *tokens)
        else:
            tokens = ("{model}", *tokens)
        cases["predict"].append(Case("predict", name, saved, tokens, 2, setup))
    cases["predict"].append(Case("predict", "model:not-a-folder", ("predict", "--model", "{requests}", *PREDICT[3:], "--requests",
                                                                   "{requests}"), ("{requests}",), 2))
    for command, name, argv, tokens, *rest in OPTION_FAULTS:
        setup = rest[0] if rest else None
        parse_error = rest[1] if len(rest) > 1 else False
        out = next((a for a in argv if a in ("{out}", "{out_json}", "{out_vcc}", "{out_dpath}")), "")
        if command.startswith("train"):
            out = "{run}/model"
        if command == "bench":
            out = "{tmp}/b.sqlite"
        if setup is not None and name.startswith("--out") or name.endswith("is a file") or name.endswith("is a folder"):
            out = ""  # the output is the fault: it exists before and must be left as it was
        cases[command].append(Case(command, name, argv, tokens, 2, setup, out, parse_error))
    cases["convert state-checkpoint"].append(Case("convert state-checkpoint", "--out an earlier saved model (replaced)", CONVERT, (),
                                                  0, _state_run(out_model=True), "{out_dpath}"))
    return dict(cases)


CASES = build_cases()
