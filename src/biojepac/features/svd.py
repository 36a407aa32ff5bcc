"""Seeded truncated SVD of a (sparse) matrix, optionally column-centred without densifying it.

Used by the GO embedding (TF-IDF matrix) and the expression-derived gene loadings (cells x genes).
A randomized range finder with power iterations (Halko et al. 2011) is deterministic for a seed and
never forms the dense centred matrix, so it scales to atlas-sized sparse inputs.
"""

import numpy as np
import scipy.sparse as sp


def truncated_svd(
    a, k: int, seed: int, center: bool = False, n_iter: int = 6, oversample: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (u, s, vt); see `_truncated_svd`. BLAS runs single-threaded here: the dense products are
    thin (n x ~k), where OpenBLAS threads mostly wait on each other; on 2 shared cores one thread was
    15x faster. threadpoolctl comes with scanpy (via scikit-learn); without it nothing is limited."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _truncated_svd(a, k, seed, center, n_iter, oversample)
    with threadpool_limits(limits=1, user_api="blas"):
        return _truncated_svd(a, k, seed, center, n_iter, oversample)


def _truncated_svd(a, k, seed, center, n_iter, oversample):
    """Top-k (u, s, vt) of `a` (n x m), or of `a - column_means` when `center`.

    Signs are fixed so the largest-magnitude entry of each right singular vector is positive,
    which makes the output reproducible across BLAS builds.
    """
    n, m = a.shape
    k = int(min(k, n, m))
    mu = np.asarray(a.mean(0)).ravel() if center else np.zeros(m)
    ones = np.ones(n)

    # The centred products, computed as A x - 1 (mu . x), so A is never densified.
    def matmul(x):
        return np.asarray(a @ x) - np.outer(ones, mu @ x)

    def rmatmul(y):
        return np.asarray(a.T @ y) - np.outer(mu, ones @ y)

    rng = np.random.default_rng(seed)
    q = _orth(matmul(rng.standard_normal((m, k + oversample))))
    for _ in range(n_iter):
        q = _orth(matmul(_orth(rmatmul(q))))
    b = rmatmul(q).T  # (k+p) x m, = Qᵀ A
    # SVD of the short, wide b through its small Gram matrix: far cheaper than LAPACK on b itself.
    evals, ub = np.linalg.eigh(b @ b.T)
    order = np.argsort(evals)[::-1]
    s = np.sqrt(evals[order].clip(0))
    ub = ub[:, order]
    vt = (ub.T @ b) / s.clip(1e-12)[:, None]
    u = q @ ub
    u, s, vt = u[:, :k], s[:k], vt[:k]
    flip = np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])
    return u * flip, s, vt * flip[:, None]


def _orth(y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of y's columns by Cholesky-QR applied twice (CholQR2): small Gram matrices only.

    Householder QR of a tall matrix is slow on this machine's BLAS; CholQR2 is as accurate for the
    well-conditioned blocks a randomized range finder produces.
    """
    for _ in range(2):
        gram = y.T @ y
        r = np.linalg.cholesky(gram + 1e-12 * np.trace(gram) / len(gram) * np.eye(len(gram))).T
        y = np.linalg.solve(r.T, y.T).T
    return y


def as_csr(x) -> sp.csr_matrix:
    return x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))
