"""ESM-2 gene embeddings with `fair-esm`, from weights the user already has on disk (never downloaded).

A gene's vector is the mean over its protein isoforms of the mean per-residue representation of the
chosen layer (the recipe behind the VCC's ESM2_pert_features.pt). Sequences come from a FASTA file whose
headers start with the gene symbol: `>SYMBOL` or `>SYMBOL|isoform ...`.
"""

import dataclasses
import pathlib

import numpy as np

from biojepac.errors import InputError
from biojepac.features.base import GeneTable

ESM_HINT = "pip install torch==2.13.0 fair-esm==2.0.0  (or: pip install 'biojepac[esm]')"


@dataclasses.dataclass(frozen=True)
class EsmConfig:
    weights_fpath: pathlib.Path
    """Local ESM-2 checkpoint, e.g. esm2_t33_650M_UR50D.pt (its -contact-regression.pt beside it if needed)."""
    fasta_fpath: pathlib.Path
    """Protein sequences; header = gene symbol, optionally followed by `|` and an isoform id."""
    layer: int = -1
    """Representation layer; -1 = the last."""
    max_residues: int = 1022
    """ESM-2 context limit; longer proteins are truncated."""
    batch_size: int = 4
    """Sequences per forward pass."""


def read_fasta(fpath: pathlib.Path) -> dict[str, list[str]]:
    """gene symbol -> list of protein sequences."""
    out: dict[str, list[str]] = {}
    gene, seq = None, []
    for line in pathlib.Path(fpath).read_text().splitlines() + [">"]:
        if line.startswith(">"):
            if gene is not None and seq:
                out.setdefault(gene, []).append("".join(seq))
            gene, seq = line[1:].split("|")[0].split()[0] if len(line) > 1 else None, []
        elif line.strip():
            seq.append(line.strip())
    return out


def make_esm_provider(cfg: EsmConfig) -> GeneTable:
    for fpath, what in ((cfg.weights_fpath, "ESM-2 weights"), (cfg.fasta_fpath, "protein FASTA")):
        if not pathlib.Path(fpath).is_file():
            raise InputError(f"{what} not found: {fpath}. BioJEPAC never downloads weights; put the file there, "
                             "or use the GO or expression-derived features instead.")
    try:
        import esm
        import torch
    except ImportError:
        raise InputError(f"ESM-2 features need torch and fair-esm, which are not installed; run: {ESM_HINT}") from None
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(cfg.weights_fpath))
    model.eval()
    layer = model.num_layers if cfg.layer == -1 else cfg.layer
    converter = alphabet.get_batch_converter()
    seqs = read_fasta(cfg.fasta_fpath)
    if not seqs:
        raise InputError(f"{cfg.fasta_fpath}: no sequences found")
    items = [(g, s[: cfg.max_residues]) for g, ss in seqs.items() for s in ss]
    means = []
    with torch.no_grad():
        for i in range(0, len(items), cfg.batch_size):
            _, strs, toks = converter(items[i : i + cfg.batch_size])
            reps = model(toks, repr_layers=[layer])["representations"][layer]
            for j, s in enumerate(strs):  # position 0 is BOS; residues are 1..len
                means.append(reps[j, 1 : len(s) + 1].mean(0).float().numpy())
    genes = list(seqs)
    owner = np.asarray([genes.index(g) for g, _ in items])
    mat = np.stack([np.mean([means[k] for k in np.flatnonzero(owner == gi)], 0) for gi in range(len(genes))])
    return GeneTable(name=f"esm2-l{layer}", keys=tuple(genes), matrix=mat, source=str(cfg.weights_fpath))
