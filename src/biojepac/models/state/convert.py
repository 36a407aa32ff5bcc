"""`biojepac convert state-checkpoint`: an arc-state ST run folder -> our saved ST model folder, without torch.

The run folder `state tx train` writes holds what `state tx infer` reads:

    checkpoints/final.ckpt        Lightning checkpoint: `state_dict` (the weights) and `hyper_parameters` (the model's kwargs)
    var_dims.pkl                  dims and `gene_names`, the output genes in order
    pert_onehot_map.pt            perturbation label -> its vector (one-hot, or the features file's embedding)
    batch_onehot_map.torch        batch label -> one-hot (its argmax is the batch_encoder row)
    cell_type_onehot_map.torch    cell type label -> one-hot (names only: ST has no cell-type input)

Torch files are read by `torch_file` (an allow-listed unpickler + NumPy); `var_dims.pkl` by the same
unpickler. Weights map one to one onto `network.StateTransition` with `backbone="llama"`, `head="state"`,
`context_token=False` (STATE has none) and the batch token on exactly when arc-state's `batch_encoder` is.
Row 0 of our batch table is "unknown"; it gets arc-state's row 0, the index `state tx infer` falls back to for
an unmapped batch label, so both treat an unknown batch alike. Options arc-state offers that this network
does not have (confidence token, batch-token classifier, gene decoders, LoRA, output_space "all", latent
inputs) are refused with their name, never silently dropped.
"""

import dataclasses
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from biojepac.errors import InputError
from biojepac.features.base import GeneTable
from biojepac.models.state import torch_file
from biojepac.models.state.network import StateConfig, StateMeta, StateTransition


@dataclasses.dataclass(frozen=True)
class ConvertStateCheckpoint:
    run_dpath: pathlib.Path
    """arc-state ST run folder (`state tx train`'s output_dir/name): config, maps and checkpoints/."""
    out: pathlib.Path
    """Our model folder to write (then `biojepac predict --model OUT`)."""
    checkpoint: str = "final.ckpt"
    """File under run_dpath/checkpoints/ to convert (final.ckpt, as `state tx infer` uses by default)."""


_UNSUPPORTED = {"confidence_head": True, "use_batch_token": True, "batch_predictor": True, "gene_decoder_bool": True,
                "finetune_vci_decoder": True, "mask_attn": True, "transformer_decoder": True}


def run_convert(cfg: ConvertStateCheckpoint) -> pathlib.Path:
    from biojepac.models.state.model import StateModel

    net, meta, features = read_run(cfg.run_dpath, cfg.checkpoint)
    model = StateModel(meta.config, features)
    model.net, model.meta = net, meta
    model.save(cfg.out)
    print(f"wrote {cfg.out}: arc-state ST ({len(net.blocks)} layers, hidden {meta.config.d_model}, "
          f"{len(meta.genes)} genes, {len(features.keys)} perturbations, {len(meta.batches)} batches)")
    return cfg.out


def read_run(run_dpath: pathlib.Path, checkpoint: str = "final.ckpt") -> tuple[StateTransition, StateMeta, GeneTable]:
    """(network, meta, perturbation table) of an arc-state ST run folder."""
    run_dpath = pathlib.Path(run_dpath)
    ckpt_fpath = run_dpath / "checkpoints" / checkpoint
    for fpath in (ckpt_fpath, run_dpath / "var_dims.pkl", run_dpath / "pert_onehot_map.pt"):
        if not fpath.is_file():
            raise InputError(f"{run_dpath}: no {fpath.relative_to(run_dpath)}; not an arc-state ST run folder "
                             "(`state tx train` writes it)")
    ckpt = torch_file.load(ckpt_fpath)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise InputError(f"{ckpt_fpath}: not a Lightning checkpoint (no state_dict / hyper_parameters)")
    hp, sd = ckpt["hyper_parameters"], {k: np.asarray(v, np.float32) for k, v in ckpt["state_dict"].items()}
    var_dims = torch_file.load_pickle(run_dpath / "var_dims.pkl")
    cfg = _config(hp, ckpt_fpath)
    pert_map = torch_file.load(run_dpath / "pert_onehot_map.pt")
    labels = [str(k) for k in pert_map]
    features = GeneTable(name="arc-state pert_onehot_map", keys=tuple(labels),
                         matrix=np.stack([np.asarray(pert_map[k], np.float32).ravel() for k in pert_map]),
                         source=str(run_dpath / "pert_onehot_map.pt"), control="", harmonize=False,
                         spec="arc-state")
    batches = _labels_by_index(run_dpath, "batch_onehot_map") if cfg.batch_token else ()
    contexts = _labels_by_index(run_dpath, "cell_type_onehot_map")
    genes = [str(g) for g in (var_dims.get("gene_names") or hp.get("gene_names") or [])]
    n_in, n_out = int(hp["input_dim"]), int(hp["output_dim"])
    if len(genes) != n_out or n_in != n_out:
        raise InputError(f"{run_dpath}: input_dim {n_in}, output_dim {n_out} and {len(genes)} gene names; only "
                         "ST models on expression (input = output genes) convert")
    if features.dim != int(hp["pert_dim"]):
        raise InputError(f"{run_dpath}/pert_onehot_map.pt: vectors of {features.dim} dims, the model takes {hp['pert_dim']}")
    n_batches = max(len(batches), 1)
    like = StateTransition(cfg, n_in, n_out, features.dim, len(contexts), n_batches, key=jax.random.PRNGKey(0))
    net = _load_weights(like, sd, cfg, ckpt_fpath)
    meta = StateMeta(config=cfg, genes=tuple(genes), contexts=tuple(contexts), batches=tuple(batches) or ("",),
                     n_in=n_in, pert_dim=features.dim, features=features.describe())
    return net, meta, features


def _config(hp: dict, src: pathlib.Path) -> StateConfig:
    on = [k for k, v in _UNSUPPORTED.items() if bool(hp.get(k, False)) == v]
    if hp.get("lora", {}) and hp["lora"].get("enable"):
        on.append("lora.enable")
    if on:
        raise InputError(f"{src}: arc-state option(s) {on} are on; this converter covers the ST model without them")
    if hp.get("transformer_backbone_key") != "llama":
        raise InputError(f"{src}: transformer_backbone_key {hp.get('transformer_backbone_key')!r}; only 'llama' converts")
    if hp.get("output_space", "gene") == "all" or hp.get("embed_key") not in (None, "X_hvg"):
        raise InputError(f"{src}: output_space {hp.get('output_space')!r} / embed_key {hp.get('embed_key')!r}; only "
                         "expression in, expression out (output_space gene, no embed_key) converts")
    if not hp.get("predict_residual", True):
        raise InputError(f"{src}: predict_residual is off; only the residual head (STATE's default) converts")
    if hp.get("activation", "gelu") != "gelu":
        raise InputError(f"{src}: activation {hp['activation']!r}; only gelu (STATE's default) converts")
    bb = hp["transformer_backbone_kwargs"]
    d, n_heads = int(hp["hidden_dim"]), int(bb["num_attention_heads"])
    if int(bb.get("hidden_size", d)) != d or int(bb.get("num_key_value_heads", n_heads)) != n_heads \
            or int(bb.get("head_dim", d // n_heads)) * n_heads != d or int(bb["intermediate_size"]) % d:
        raise InputError(f"{src}: backbone {dict(bb)} is not a plain multi-head Llama of width {d} "
                         "(grouped KV heads, head_dim x heads != hidden or an intermediate size not a multiple of it)")
    if str(bb.get("hidden_act", "silu")) != "silu":
        raise InputError(f"{src}: Llama hidden_act {bb['hidden_act']!r}; only silu converts")
    n_enc = int(hp.get("n_encoder_layers", 2))
    return StateConfig(set_size=int(hp.get("cell_set_len", 256)), d_model=d, n_layers=int(bb["num_hidden_layers"]),
                       n_heads=n_heads, mlp_ratio=int(bb["intermediate_size"]) // d, backbone="llama", head="state",
                       n_basal_layers=n_enc if hp.get("use_basal_projection", True) else 1, n_pert_layers=n_enc,
                       n_decoder_layers=int(hp.get("n_decoder_layers", 2)), energy_scale=0.5,
                       batch_token=bool(hp.get("batch_encoder", False)), context_token=False, label_dropout=0.0,
                       rms_eps=float(bb.get("layer_norm_eps", bb.get("rms_norm_eps", 1e-6))))


def _labels_by_index(run_dpath: pathlib.Path, basename: str) -> tuple[str, ...]:
    """Labels of a one-hot map, ordered by their index (`state tx infer` takes the argmax as the index)."""
    fpath = next((run_dpath / f"{basename}{ext}" for ext in (".torch", ".pt", ".pkl") if (run_dpath / f"{basename}{ext}").is_file()), None)
    if fpath is None:
        return ()
    mapping = torch_file.load_pickle(fpath) if fpath.suffix == ".pkl" else torch_file.load(fpath)
    index = {str(k): int(np.argmax(np.asarray(v))) if np.ndim(v) else int(v) for k, v in mapping.items()}
    by_row = sorted(index, key=index.get)
    if [index[k] for k in by_row] != list(range(len(by_row))):
        raise InputError(f"{fpath}: indices {sorted(index.values())} are not 0..{len(by_row) - 1}")
    return tuple(by_row)


def _mlp_keys(sd: dict, prefix: str, n_layers: int) -> list[str]:
    """arc-state's build_mlp is Sequential(Linear, act, Dropout, ...): its Linears sit at 0, 3, 6, ...; the basal
    encoder without projection is a bare Linear (`prefix.weight`)."""
    if f"{prefix}.weight" in sd:
        return [prefix]
    return [f"{prefix}.{3 * i}" for i in range(n_layers)]


def _load_weights(net: StateTransition, sd: dict, cfg: StateConfig, src: pathlib.Path) -> StateTransition:
    used: set[str] = set()

    def take(key: str) -> jnp.ndarray:
        if key not in sd:
            raise InputError(f"{src}: state_dict has no {key!r}; not the arc-state ST layout this converter reads")
        used.add(key)
        return jnp.asarray(sd[key])

    def mlp(module: eqx.nn.MLP, prefix: str, n_layers: int) -> eqx.nn.MLP:
        names = _mlp_keys(sd, prefix, n_layers)
        if len(names) != len(module.layers):
            raise InputError(f"{src}: {prefix} has {len(names)} linear layers, expected {len(module.layers)}")
        for i, name in enumerate(names):
            w, b = take(f"{name}.weight"), take(f"{name}.bias")
            if module.layers[i].weight.shape != w.shape:
                raise InputError(f"{src}: {name}.weight is {w.shape}, expected {module.layers[i].weight.shape}")
            module = eqx.tree_at(lambda m, i=i: (m.layers[i].weight, m.layers[i].bias), module, (w, b))
        return module

    net = eqx.tree_at(lambda n: n.cell_in, net, mlp(net.cell_in, "basal_encoder", cfg.n_basal_layers))
    net = eqx.tree_at(lambda n: n.pert_in, net, mlp(net.pert_in, "pert_encoder", cfg.n_pert_layers))
    net = eqx.tree_at(lambda n: n.head, net, mlp(net.head, "project_out", cfg.n_decoder_layers))
    blocks = []
    for i, block in enumerate(net.blocks):
        p = f"transformer_backbone.layers.{i}"
        block = eqx.tree_at(
            lambda b: (b.attn_norm.weight, b.q_proj, b.k_proj, b.v_proj, b.o_proj, b.mlp_norm.weight,
                       b.gate_proj, b.up_proj, b.down_proj), block,
            tuple(take(f"{p}.{k}") for k in (
                "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                "mlp.up_proj.weight", "mlp.down_proj.weight")))
        blocks.append(block)
    net = eqx.tree_at(lambda n: n.blocks, net, blocks)
    net = eqx.tree_at(lambda n: n.ln_f.weight, net, take("transformer_backbone.norm.weight"))
    if cfg.batch_token:
        table = take("batch_encoder.weight")
        # Row 0 ("unknown") = arc-state's row 0, its fallback for unmapped batch labels; rows 1.. = its rows.
        net = eqx.tree_at(lambda n: n.batch_emb.weight, net, jnp.concatenate([table[:1], table]))
    used.add("transformer_backbone.embed_tokens.weight")  # LlamaModel's token table: unused (fed inputs_embeds)
    left = sorted(k for k in sd if k not in used and not k.startswith("transformer_backbone.rotary_emb"))
    if left:
        raise InputError(f"{src}: weights {left[:8]} have no place in the converted model; refusing to drop them")
    return net
