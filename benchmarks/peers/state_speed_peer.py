"""arc-state's ST training step at a given size, timed in its own env (run by benchmarks/bench_state_speed.py).

    benchmarks/peers/envs/state/bin/python benchmarks/peers/state_speed_peer.py OUT.json --batch 2 --steps 3

Builds `StateTransitionPerturbationModel` with state_sm's sizes (hidden 672, 4 Llama layers, 8 heads, set 128,
basal Linear, 4-layer encoders/decoder, energy loss) on 2,000 genes and 5,120-d perturbation features, and
times forward + `SamplesLoss("energy")` + backward + Adam on random batches: the work of its `training_step`
without Lightning's logging or the data loader (which only favours arc-state).
"""

import argparse
import json
import time

import torch
from state.tx.models.state_transition import StateTransitionPerturbationModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--set-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d, genes, pert_dim, s, b = 672, 2000, 5120, args.set_size, args.batch
    bb = {"bidirectional_attention": True, "max_position_embeddings": s, "hidden_size": d, "intermediate_size": 4 * d,
          "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 84, "use_cache": False,
          "attention_dropout": 0.0, "hidden_dropout": 0.0, "layer_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1,
          "eos_token_id": 2, "tie_word_embeddings": False, "rotary_dim": 0, "use_rotary_embeddings": False}
    model = StateTransitionPerturbationModel(
        input_dim=genes, hidden_dim=d, output_dim=genes, pert_dim=pert_dim, batch_dim=None, gene_dim=genes,
        dropout=0.1, lr=1e-4, loss_fn="mse", control_pert="non-targeting", embed_key=None, output_space="gene",
        gene_names=[f"g{i}" for i in range(genes)], batch_size=b, cell_set_len=s, blur=0.05, loss="energy",
        n_encoder_layers=4, n_decoder_layers=4, predict_residual=True, use_basal_projection=False,
        distributional_loss="energy", transformer_backbone_key="llama", transformer_backbone_kwargs=bb,
        batch_encoder=False, gene_decoder_bool=False, decoder_cfg=None)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    times = []
    for step in range(args.steps + 1):
        batch = {"ctrl_cell_emb": torch.rand(b * s, genes), "pert_emb": torch.randn(b * s, pert_dim),
                 "pert_cell_emb": torch.rand(b * s, genes)}
        t0 = time.perf_counter()
        pred = model.forward(batch, padded=True).reshape(b, s, genes)
        loss = model.loss_fn(pred, batch["pert_cell_emb"].reshape(b, s, genes)).nanmean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if step:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    times.sort()
    step_s = times[len(times) // 2]
    json.dump({"step_s": step_s, "step_s_all": times, "cells_per_s": b * s / step_s, "n_params": n_params,
               "batch": b, "set_size": s, "threads": args.threads, "torch": torch.__version__}, open(args.out, "w"))


if __name__ == "__main__":
    main()
