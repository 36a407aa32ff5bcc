"""Modality tags (CRISPRi, CRISPRa, KO, overexpression, drug): ids for the composer's mode embedding.

Source files spell modalities many ways; `modality_ids` maps the known spellings and raises on
anything else instead of guessing.
"""

from collections.abc import Sequence

import numpy as np

from biojepac.data.schema import PERT_TYPES
from biojepac.errors import InputError
from biojepac.features.base import GeneTable

SYNONYMS = {
    "crispri": "CRISPRi", "interference": "CRISPRi", "knockdown": "CRISPRi", "kd": "CRISPRi",
    "crispra": "CRISPRa", "activation": "CRISPRa",
    "ko": "KO", "knockout": "KO", "crispr": "KO", "crisprko": "KO", "crispr-cas9": "KO",
    "overexpression": "overexpression", "oe": "overexpression", "orf": "overexpression",
    "drug": "drug", "chemical": "drug", "compound": "drug", "small molecule": "drug",
}
"""Lower-cased spelling -> canonical `PERT_TYPES` entry."""


def canonical_modality(value: str, where: str = "pert_type") -> str:
    key = str(value).strip().lower()
    if key in SYNONYMS:
        return SYNONYMS[key]
    raise InputError(f"{where}: unknown perturbation modality {value!r}; expected one of {list(PERT_TYPES)}")


def modality_ids(values: Sequence[str], where: str = "pert_type") -> np.ndarray:
    """Integer id per value (index into `PERT_TYPES`), for an embedding table."""
    return np.asarray([PERT_TYPES.index(canonical_modality(v, where)) for v in values], np.int32)


def make_modality_provider() -> GeneTable:
    """One-hot modality vectors keyed by the canonical names (pass canonical names as labels)."""
    return GeneTable(name="modality-onehot", keys=PERT_TYPES, matrix=np.eye(len(PERT_TYPES)), source="schema",
                     control="", harmonize=False)  # modality names, not genes
