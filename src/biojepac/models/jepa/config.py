"""Every BioJEPAC size and weight, defaulting to the BioJEPAC report, plus named presets.

`paper` is the BioJEPAC report's architecture; `cpu-small` trains on 2 CPU cores in minutes; `tiny` is for
tests (the same three names as the state-transition model's presets, `models.registry.PRESETS`).
"""

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    d: int = 256
    """Token / latent width."""
    n_layers: int = 6
    """Linear-attention transformer blocks."""
    n_heads: int = 4
    """Attention heads."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of d."""
    token_mode: Literal["all", "topk", "expressed"] = "all"
    """Which genes become tokens: all HVGs, the top-k by expression, or the expressed ones (padded)."""
    n_tokens: int = 0
    """Tokens per cell for `topk`/`expressed` (0: all genes). Fixed, so shapes stay static."""
    gene_id_bias: bool = False
    """Also add a second, unscaled identity embedding to each token. The report's h_i = x_i·e_i makes every
    zero-expressed gene the same token; this keeps them apart (off by default = the report)."""
    attention: Literal["linear", "softmax"] = "linear"
    """Linear attention with φ = ELU + 1 (the report) or softmax (for the scaling benchmark)."""


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Stage 1: JEPA with an EMA teacher."""

    mask_ratio: float = 0.6
    """Fraction of tokens masked (a fixed count per cell)."""
    token_subset: int = 0
    """Gene tokens of each cell a step reads, a fresh uniform subset per cell and step, for student and
    teacher alike (0: every token). The cost of a step is about proportional to it."""
    pred_d: int = 128
    """Width of the masked-token predictor."""
    pred_layers: int = 3
    """Blocks in the masked-token predictor."""
    ema_start: float = 0.996
    """EMA momentum m at step 0."""
    ema_end: float = 0.996
    """EMA momentum at the last step (cosine schedule; equal to ema_start = constant, as in the report)."""
    ema_init_left: float = 0.01
    """Cap the momentum so that at most this fraction of the teacher's random init is left after pretraining
    (0.996 over 150 steps would leave 55%: the teacher would still be mostly noise)."""
    l1_weight: float = 1.0
    """Weight of the L1 loss between predicted and teacher latents at masked tokens."""
    vic_inv: float = 25.0
    """VICReg invariance weight λ."""
    vic_var: float = 25.0
    """VICReg variance weight μ."""
    vic_cov: float = 1.0
    """VICReg covariance weight ν."""
    n_steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4


@dataclasses.dataclass(frozen=True)
class ComposeConfig:
    """Stage 2: the action composer, pretrained to read the response from the perturbation features."""

    objective: Literal["response", "infonce"] = "response"
    """`response`: regress the top principal components of the training perturbations' pseudobulk deltas from
    their features; `infonce`: InfoNCE between two feature-dropout views (no biological signal; the ablation)."""
    n_components: int = 16
    """`response`: principal components regressed."""

    d_content: int = 320
    """Shared content latent c."""
    d_mode: int = 64
    """Mode embedding m (CRISPRi, CRISPRa, KO, overexpression, drug)."""
    hidden: int = 1024
    """Hidden width of each modality's projection MLP."""
    guide_dim: int = 0
    """Guide-DNA feature width (0: no guide modality)."""
    chem_dim: int = 0
    """Chemical feature width (0: no chemical modality; room for drugs)."""
    tau: float = 0.07
    """InfoNCE temperature."""
    view_dropout: float = 0.2
    """With one modality, the two 'descriptions' are two feature-dropout views of it."""
    n_steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """Stage 3: the linear latent prior (closed form) plus the action-conditioned predictor as a learned
    residual, trained on cell sets: S controls of a group's context and batch against S of its cells."""

    d: int = 128
    """Predictor width."""
    n_layers: int = 2
    """Self-attention blocks after the action cross-attention."""
    n_heads: int = 4
    n_action_tokens: int = 4
    """The action latent is split into this many key/value tokens for the cross-attention."""
    set_size: int = 16
    """S: control cells (and perturbed cells) per group in a step."""
    token_subset: int = 0
    """Gene tokens a step reads per group: its perturbed genes plus a uniform draw of the others (0: every
    gene). The residual is validated, and predictions made, on every gene."""
    expr_weight: float = 1.0
    """Weight of the squared error between the decoded predicted mean shift and the group's pseudobulk delta."""
    latent_weight: float = 1.0
    """Weight of the squared error between the predicted and the group's mean teacher-latent shift."""
    energy_weight: float = 0.1
    """Weight of the energy distance between the predicted and the real perturbed latent sets."""
    nll_weight: float = 0.01
    """Weight of the Gaussian NLL of the real perturbed latents (trains the log-variance head)."""
    residual: bool = True
    """Learn the residual on top of the prior (False: the prior alone, for the ablation)."""
    interaction: bool = True
    """The gene x action bilinear term and the targeted-token flag in the residual predictor (False: the
    action enters only through cross-attention; the ablation)."""
    context_token: bool = True
    """Add the context embedding to every token (False: the predictor is not told the context; the ablation)."""
    prior: Literal["ridge", "none"] = "ridge"
    """The closed-form prior ("none": the residual predictor alone has to learn every shift)."""
    prior_lambda_by: Literal["correlation", "mse"] = "correlation"
    """How the prior's ridge λ is chosen by leave-one-out: mean Pearson r of each perturbation's predicted and
    measured shift (default), or squared error (the ablation; it shrinks harder toward the mean shift)."""
    prior_select_transfer: bool = True
    """Transfer shifts measured in other contexts only where that beat the context's mean shift on the
    training contexts (False: always transfer, as the context-transfer baseline; the ablation)."""
    val_fraction: float = 0.2
    """Training perturbations held out to decide whether (and how long) the residual helps."""
    n_evals: int = 5
    """Validation checks over the stage; the best one is kept (the prior alone if it is best)."""
    label_dropout: float = 0.1
    """Probability of replacing the context label with "unknown" during training."""
    weight_decay: float = 1e-2
    """AdamW weight decay of the predictor."""
    finetune_composer: bool = True
    """Let the composer keep learning from this stage's loss."""
    n_steps: int = 2000
    batch_size: int = 8
    """Groups (cell sets) per step."""
    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Stage 4: latents -> log-normalised expression, on frozen teacher latents."""

    n_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class BioJepacConfig:
    encoder: EncoderConfig = EncoderConfig()
    pretrain: PretrainConfig = PretrainConfig()
    compose: ComposeConfig = ComposeConfig()
    predict: PredictConfig = PredictConfig()
    decode: DecodeConfig = DecodeConfig()
    decode_mode: Literal["residual", "direct"] = "residual"
    """`direct`: decode(predictor(encode(control), a)). `residual`: control + that minus the same with the
    control action, which cancels decoder bias and keeps each control cell's own variation."""
    seed: int = 0
    """Seeds every parameter init, mask, batch order and pairing."""


def get_preset(name: str) -> BioJepacConfig:
    r = dataclasses.replace
    base = BioJepacConfig()
    if name == "paper":
        return base
    if name == "cpu-small":
        # Steps read a random subset of each cell's gene tokens (64 of 500 in pretraining, 128 per group in the
        # predict stage), so a step costs about that fraction of the whole cell (benchmarks/results/biojepac.md).
        return BioJepacConfig(
            encoder=EncoderConfig(d=64, n_layers=2, n_heads=4, gene_id_bias=True),
            pretrain=r(base.pretrain, pred_d=64, pred_layers=1, token_subset=64, n_steps=150, batch_size=32, lr=1e-3),
            compose=r(base.compose, d_content=64, d_mode=16, hidden=128, n_steps=200, batch_size=32, lr=1e-3),
            predict=r(base.predict, d=64, n_layers=1, token_subset=128, n_steps=400, batch_size=8, lr=1e-3),
            decode=r(base.decode, n_steps=200, batch_size=32, lr=3e-3),
        )
    if name == "tiny":
        # Steps are cheap next to XLA compilation at this size, so tiny trains long enough to overfit.
        return BioJepacConfig(
            encoder=EncoderConfig(d=16, n_layers=1, n_heads=2, gene_id_bias=True),
            pretrain=r(base.pretrain, pred_d=16, pred_layers=1, n_steps=200, batch_size=16, lr=3e-3),
            compose=r(base.compose, d_content=16, d_mode=8, hidden=32, n_steps=200, batch_size=16, lr=3e-3),
            predict=r(base.predict, d=16, n_layers=1, n_heads=2, set_size=8, n_steps=200, batch_size=8, lr=3e-3, n_evals=4),
            decode=r(base.decode, n_steps=600, batch_size=16, lr=1e-2),
        )
    raise ValueError(f"unknown preset {name!r}; choose tiny, cpu-small or paper")


def config_from_dict(d: dict) -> BioJepacConfig:
    subs = {"encoder": EncoderConfig, "pretrain": PretrainConfig, "compose": ComposeConfig, "predict": PredictConfig, "decode": DecodeConfig}
    return BioJepacConfig(**{k: subs[k](**v) if k in subs else v for k, v in d.items()})
