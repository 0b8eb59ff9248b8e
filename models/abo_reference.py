"""Hand-coded gene counting (EM) for ABO allele frequencies, in plain numpy.

The reference for ``models/abo.toml``:

    declarem compare models/abo.toml --reference models/abo_reference.py

Alleles A, B, O with frequencies p, q, r (p + q + r = 1); under Hardy-Weinberg the genotypes have
frequencies AA p^2, AO 2pr, BB q^2, BO 2qr, AB 2pq, OO r^2, and the phenotype (blood group) hides
whether an A is AA or AO, and a B BB or BO. With n_A, n_B, n_AB, n_O patients of each blood group:

E-step: n_AA = n_A p^2 / (p^2 + 2pr),  n_AO = n_A 2pr / (p^2 + 2pr),  likewise n_BB and n_BO;
        n_AB and n_OO are observed.
M-step (count alleles, n = n_A + n_B + n_AB + n_O):
        p = (2 n_AA + n_AO + n_AB) / 2n,  q = (2 n_BB + n_BO + n_AB) / 2n,  r = (2 n_OO + n_AO + n_BO) / 2n.

Data as in models/abo.csv: ``data["phenotype"]`` (0 = O, 1 = A, 2 = B, 3 = AB) and ``data["count"]``.

    step(data, params) -> params          one EM iteration, the ``declarem compare`` interface
    loglik(data, params) -> float         sum over blood groups of n log P(group)
"""

import numpy as np


def counts(data):
    """(n_O, n_A, n_B, n_AB): the total count of each blood group."""
    group = np.asarray(data["phenotype"]).astype(np.intp)
    weight = np.asarray(data["count"], dtype=float) if "count" in data else np.ones(len(group))
    return np.bincount(group, weights=weight, minlength=4)


def genotype_probs(p, q, r):
    """OO, AA, AO, BB, BO, AB (the spec's order): genotype.probs."""
    return np.array([r * r, p * p, 2 * p * r, q * q, 2 * q * r, 2 * p * q])


def step(data, params):
    """One round of gene counting; returns ``{"p": ..., "q": ..., "r": ..., "genotype": {"probs": ...}}``."""
    n_o, n_a, n_b, n_ab = counts(data)
    p, q, r = (float(params[name]) for name in ("p", "q", "r"))
    n_aa = n_a * p * p / (p * p + 2 * p * r)
    n_ao = n_a - n_aa
    n_bb = n_b * q * q / (q * q + 2 * q * r)
    n_bo = n_b - n_bb
    alleles = 2.0 * (n_o + n_a + n_b + n_ab)
    p, q, r = ((2 * n_aa + n_ao + n_ab) / alleles, (2 * n_bb + n_bo + n_ab) / alleles,
               (2 * n_o + n_ao + n_bo) / alleles)
    return {"p": float(p), "q": float(q), "r": float(r), "genotype": {"probs": genotype_probs(p, q, r)}}


def loglik(data, params):
    n_o, n_a, n_b, n_ab = counts(data)
    p, q, r = (float(params[name]) for name in ("p", "q", "r"))
    return float(n_o * np.log(r * r) + n_a * np.log(p * p + 2 * p * r) + n_b * np.log(q * q + 2 * q * r)
                 + n_ab * np.log(2 * p * q))
