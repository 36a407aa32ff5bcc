"""BioJEPAC stage-1 pretraining streamed from backed shards: files larger than memory, many hosts.

The same loss, EMA teacher, loop and checkpoints as `models.jepa.trainer`'s pretrain stage; what changes is
where the cells come from (`data.stream.CellStream`, each host reading only its part) and how the step
runs (`train.distributed`: global batches across hosts, optional bf16 and gradient accumulation).
Every host runs this same command; `--dist.*` or `BIOJEPAC_*` variables say who is who.
"""

import dataclasses
import functools
import pathlib
from typing import Callable

import jax
import numpy as np

from biojepac.data.fingerprint import shards_fingerprint
from biojepac.data.stream import CellStream, StreamConfig
from biojepac.models.jepa import stages
from biojepac.models.jepa.config import BioJepacConfig, get_preset
from biojepac.models.jepa.encoder import Encoder
from biojepac.models.jepa.jepa_predictor import MaskPredictor
from biojepac.models.jepa.network import log_library
from biojepac.models.jepa.trainer import make_optim
from biojepac.models.base import Preset, scale_steps
from biojepac.train import distributed, ema, loop, run_folder
from biojepac.train.distributed import DistConfig


@dataclasses.dataclass(frozen=True)
class StreamedPretrainConfig:
    shards: tuple[str, ...] = ()
    """Prepared (log1p, HVG) backed .h5ad / .zarr shards with identical genes (`biojepac data prepare-ooc`, or
    `data combine`); a folder of .h5ad shards (`data combine --shard-cells`) stands for all of them."""
    run_dpath: pathlib.Path = pathlib.Path("runs/stream_pretrain")
    """Checkpoint + metrics.jsonl; an existing checkpoint is resumed."""
    preset: Preset = "cpu-small"
    """Model sizes (and default steps / batch size): tiny | cpu-small | paper."""
    steps_scale: float = 1.0
    """Multiply the preset's pretraining steps."""
    batch_size: int = 0
    """Global batch (cells over all hosts; 0: the preset's). Must divide by hosts, devices and `grad_accum`."""
    n_tokens: int = 0
    """Top-expressed gene tokens per cell (0: the preset's token selection)."""
    block_rows: int = 1024
    """Loader: contiguous rows per read (the shuffle unit)."""
    window_blocks: int = 16
    """Loader: blocks shuffled together (memory ~ 2 windows)."""
    bf16: bool = False
    """Compute in bfloat16 with float32 master weights (on an H200: 1.5-1.7x faster steps at `paper`; mixed at
    `cpu-small`; benchmarks/results/gpu_h200.md)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    ckpt_every: int = 50
    """Checkpoint interval in steps."""
    seed: int = 0
    """Seeds initialisation, masks and data order."""
    progress: bool = True
    """Progress bar (process 0 only)."""
    overwrite: bool = False
    """Empty the run folder and start afresh (default: resume a run made with the same settings and shards,
    refuse one made with others)."""
    dist: DistConfig = DistConfig()
    """Multi-host settings (single process when unset)."""


def pretrain_streamed(cfg: StreamedPretrainConfig) -> loop.TrainState:
    host, n_hosts = distributed.init_distributed(cfg.dist)  # before any JAX computation
    mcfg = get_preset(cfg.preset)
    if cfg.n_tokens:
        mcfg = dataclasses.replace(mcfg, encoder=dataclasses.replace(mcfg.encoder, token_mode="expressed", n_tokens=cfg.n_tokens))
    c = mcfg.pretrain
    n_steps, global_bs = scale_steps(c.n_steps, cfg.steps_scale), cfg.batch_size or c.batch_size
    assert global_bs % n_hosts == 0, f"batch_size={global_bs} must divide by {n_hosts} hosts"
    stream = CellStream(
        StreamConfig(shard_fpaths=tuple(cfg.shards), kind="cells", cell_repr="dense", batch_size=global_bs // n_hosts,
                     block_rows=cfg.block_rows, window_blocks=cfg.window_blocks, seed=cfg.seed + 1),
        process_index=host, process_count=n_hosts,
    )
    # What the run is (settings that change the result, and the data): a rerun with others is refused.
    settings = {k: getattr(cfg, k) for k in ("preset", "seed", "steps_scale", "n_tokens", "block_rows", "window_blocks",
                                             "bf16", "grad_accum")}
    settings = {**settings, "batch_size": global_bs, "n_hosts": n_hosts, "data": shards_fingerprint(stream.shards, stream.gene_names)}
    run_folder.open_run(cfg.run_dpath, "train stream-pretrain", settings, cfg.overwrite, write=host == 0)  # host 0 writes
    state, step_fn = make_pretrain_step(stream.n_genes, mcfg, n_steps, cfg.bf16, cfg.grad_accum, cfg.seed)

    def get_batch(step: int) -> dict[str, np.ndarray]:
        b = stream.batch_at(step)
        mask = {"gene_mask": b["gene_mask"]} if "gene_mask" in b else {}  # combined shards: unmeasured genes masked
        return {"x": b["x"], "lib": log_library(b["x"]), **mask}

    lcfg = loop.LoopConfig(n_steps=n_steps, log_every=max(1, min(10, n_steps // 10)), ckpt_every=cfg.ckpt_every, progress=cfg.progress and host == 0)
    header = {"stage": "pretrain", **settings}
    return loop.run_loop(state, step_fn, get_batch, lcfg, pathlib.Path(cfg.run_dpath), header=header, desc="pretrain(stream)")


def make_pretrain_step(n_genes: int, mcfg: BioJepacConfig, n_steps: int, bf16: bool = False, grad_accum: int = 1,
                       seed: int = 0) -> tuple[loop.TrainState, Callable]:
    """The initial state and the jitted stage-1 step (student + predictor trained, EMA teacher) of this command;
    `benchmarks/bench_gpu.py` times this same step in float32 and bf16."""
    c = mcfg.pretrain
    k_enc, k_pred, k_state = jax.random.split(jax.random.PRNGKey(seed), 3)
    student = Encoder(n_genes, mcfg.encoder, k_enc)
    predictor = MaskPredictor(mcfg.encoder.d, c.pred_d, c.pred_layers, mcfg.encoder.n_heads, k_pred, mcfg.encoder.attention)
    loss_fn = functools.partial(stages.pretrain_loss, cfg=c)
    if bf16:
        loss_fn = distributed.mixed_precision(loss_fn)
    optim = make_optim(c.lr, n_steps)
    momentum = lambda step: ema.ema_momentum(step, n_steps, c.ema_start, c.ema_end)
    update_extra = lambda p, teacher, step: ema.ema_update(teacher, p[0], momentum(step))
    if grad_accum > 1:
        step_fn = loop.make_accum_step(loss_fn, optim, grad_accum, update_extra)
    else:
        step_fn = loop.make_train_step(loss_fn, optim, update_extra)
    return loop.make_state((student, predictor), optim, k_state, student), step_fn
