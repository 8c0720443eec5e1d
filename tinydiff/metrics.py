"""Sample-quality metrics for 2-D (or any low-dimensional) point clouds, and the Frechet
distance between features of two sets of samples.

    energy_distance   a two-sample distance between distributions (Szekely & Rizzo):
                      0 when the two samples come from the same distribution
    mode_counts       per mode of a Gaussian mixture: how many samples land close to it
    mode_coverage     how many modes received a fair part of the samples
    mode_precision    which fraction of samples lie close to some mode
    frechet_distance  the distance between Gaussians fitted to two feature sets (the "FID"
                      when the features are Inception-v3's; tinydiff.scorer uses a small
                      MNIST classifier's), with frechet_distance_gaussians, gaussian_fit and
                      the matrix square root sqrtm_psd it is built from

The mode metrics follow the practice of the mode-collapse literature (e.g. Metz et al.
2017, Unrolled GANs; Srivastava et al. 2017, VEEGAN): a sample is "high quality" if it
lies within k = 3 standard deviations of a mode. All pairwise work is vectorised and
chunked, and sums are accumulated in float64 (metrics are not a training hot path).
"""
import numpy as np


def _as_cloud(name, x, dim=None):
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[N, {dim}]" if dim is not None else "[N, D]"
        raise ValueError(f"{name} must have shape {want}, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"{name} must hold finite numbers (dtype {x.dtype}); found NaN/inf or non-numbers")
    return x.astype(np.float64, copy=False)


def _sum_pairwise_distances(a, b, chunk_pairs=1 << 20):
    """sum_{i,j} |a_i - b_j|  for a: [N, D], b: [M, D], over row blocks of ~chunk_pairs pairs.

    Differences are formed directly (not via |a|^2 + |b|^2 - 2ab), so |a_i - a_i| is exactly 0
    and nearby points keep their precision. Peak memory ~ 3 * 8 * chunk_pairs bytes.
    """
    rows = max(1, chunk_pairs // max(1, len(b)))
    total = 0.0
    for start in range(0, len(a), rows):                          # loop over blocks, not points
        block = a[start:start + rows]                             # [r, D]
        sq = np.zeros((len(block), len(b)))                       # [r, M]
        for d in range(a.shape[1]):                               # D = 2: one pass per coordinate
            sq += (block[:, None, d] - b[None, :, d]) ** 2
        total += np.sqrt(sq).sum()
    return total


def energy_distance(x, y, chunk_pairs=1 << 20):
    """Energy distance  E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, with X' an independent
    copy of X and |.| the Euclidean norm (Szekely & Rizzo, 2013, "Energy statistics: a class
    of statistics based on distances", J. Stat. Plan. Inference 143, definition of E(X, Y)).

    Estimated from x: [N, D] and y: [M, D] (N, M >= 2) with
        2/(N M) sum_{i,j} |x_i - y_j|
        - 1/(N (N-1)) sum_{i != i'} |x_i - x_i'|  -  1/(M (M-1)) sum_{j != j'} |y_j - y_j'|,
    i.e. unbiased U-statistics for the within-sample terms. E(X, Y) >= 0 with equality iff
    X and Y have the same distribution; the unbiased estimate can dip slightly below 0
    when they do. Work is done in blocks of ~``chunk_pairs`` pairs (~25 MB by default).
    Returns a python float.

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
    >>> abs(td.metrics.energy_distance(a, b)) < 0.02, td.metrics.energy_distance(a, b + 3) > 1
    (True, True)
    """
    x = _as_cloud("x", x)
    y = _as_cloud("y", y, dim=x.shape[1])
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"x and y need at least 2 points each, got N={n}, M={m}")
    xy = _sum_pairwise_distances(x, y, chunk_pairs) / (n * m)
    xx = _sum_pairwise_distances(x, x, chunk_pairs) / (n * (n - 1))   # diagonal terms are 0
    yy = _sum_pairwise_distances(y, y, chunk_pairs) / (m * (m - 1))
    return float(2.0 * xy - xx - yy)


def _mode_arrays(samples, means, std):
    means = _as_cloud("means", means)
    samples = _as_cloud("samples", samples, dim=means.shape[1])
    std = np.asarray(std, dtype=np.float64)
    if std.ndim > 1 or (std.ndim == 1 and std.shape != (len(means),)) or not np.all(std > 0):
        raise ValueError(f"std must be a positive scalar or one positive value per mode "
                         f"(shape [{len(means)}]), got {std!r}")
    return samples, means, np.broadcast_to(std, (len(means),))


def _distances(samples, means):
    """|x_i - mu_k| for samples: [N, D], means: [K, D]  ->  [N, K]."""
    return np.sqrt(np.sum((samples[:, None, :] - means[None, :, :]) ** 2, axis=-1))


def mode_counts(samples, means, std, k=3.0):
    """Per-mode count of high-quality samples.  Returns int array [K].

    Each sample x_i is assigned to its nearest mode c_i = argmin_k |x_i - mu_k| and counts
    for that mode only if it is close: |x_i - mu_{c_i}| <= k * std_{c_i}.
    samples: [N, D], means: [K, D], std: scalar or [K].

    >>> means = np.array([[0.0, 0.0], [5.0, 0.0]])
    >>> td.metrics.mode_counts(np.array([[0.1, 0.0], [4.9, 0.0], [2.5, 0.0]]), means, std=0.1).tolist()
    [1, 1]
    """
    samples, means, std = _mode_arrays(samples, means, std)
    dist = _distances(samples, means)                                 # [N, K]
    nearest = np.argmin(dist, axis=1)                                 # [N]
    close = dist[np.arange(len(samples)), nearest] <= k * std[nearest]
    return np.bincount(nearest[close], minlength=len(means))


def mode_coverage(samples, means, std, weights=None, min_fraction=0.2, k=3.0):
    """Number of modes that received at least ``min_fraction`` of their fair share.

    With N samples and mode weights w_k (equal if None), mode k is covered when
        mode_counts(samples, means, std, k)[k] >= min_fraction * N * w_k,
    i.e. (default) at least a fifth of the N w_k samples a perfect sampler would put
    there lie within k = 3 std of it (and nearer to it than to any other mode).
    Samples far from every mode count for none, so pure noise covers nothing.
    Returns an int in [0, K]; a perfect sampler scores K.

    >>> means = np.array([[0.0, 0.0], [5.0, 0.0]])
    >>> td.metrics.mode_coverage(np.zeros((10, 2)), means, std=0.1)      # every sample on one mode
    1
    """
    counts = mode_counts(samples, means, std, k)
    K, n = len(counts), len(np.asarray(samples))
    if n == 0:
        raise ValueError("samples is empty; coverage needs at least one sample")
    w = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (K,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights must be {K} non-negative numbers summing to 1, got {weights!r}")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    covered = (w > 0) & (counts >= min_fraction * n * w * (1.0 - 1e-12))   # '>=' despite rounding
    return int(np.sum(covered))


def mode_precision(samples, means, std, k=3.0):
    """Fraction of samples within k std of some mode:  mean_i 1[ min_k |x_i - mu_k| / std_k <= k ].

    For an exact sampler of a well-separated isotropic 2-D mixture this is
    P(|z| <= k) = 1 - exp(-k^2 / 2) = 0.989 at k = 3 (|z| is chi with 2 degrees of freedom),
    not 1. samples: [N, D], means: [K, D], std: scalar or [K]. Returns a float in [0, 1].

    >>> means = np.array([[0.0, 0.0], [5.0, 0.0]])
    >>> td.metrics.mode_precision(np.array([[0.1, 0.0], [2.5, 0.0]]), means, std=0.1)
    0.5
    """
    samples, means, std = _mode_arrays(samples, means, std)
    if len(samples) == 0:
        raise ValueError("samples is empty; precision needs at least one sample")
    close = np.any(_distances(samples, means) <= k * std, axis=1)     # [N]
    return float(np.mean(close))


# ---------------------------------------------------------------------- Frechet distance
# FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between N(mu_a, S_a) and N(mu_b, S_b):
# the squared 2-Wasserstein distance between two Gaussians (Dowson & Landau 1982, "The Frechet
# distance between multivariate normal distributions", J. Multivariate Anal. 12(3)); with
# Gaussians fitted to Inception-v3 features it is the FID of Heusel et al. 2017 ("GANs trained by
# a two time-scale update rule converge to a local Nash equilibrium", NeurIPS). S_a S_b is not
# symmetric, so its square root is not taken directly: it has the trace of the symmetric
# (S_a^{1/2} S_b S_a^{1/2})^{1/2}, and every square root here comes from eigh in float64 with
# eigenvalues clipped at 0, so near-singular covariances (dead ReLU units, N < D) give no NaN
# and no complex parts.
def sqrtm_psd(matrix) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix [D, D], float64.

    With matrix = V diag(w) V^T (``eigh``), sqrt = V diag(sqrt(max(w, 0))) V^T. Rounding can
    make the smallest eigenvalues of a PSD matrix slightly negative; they are clipped to 0.

    >>> td.metrics.sqrtm_psd(np.diag([4.0, 9.0])).tolist()
    [[2.0, 0.0], [0.0, 3.0]]
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square [D, D], got shape {m.shape}")
    w, v = np.linalg.eigh((m + m.T) / 2)          # symmetrise: eigh reads one triangle only
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between N(mu_a, S_a) and N(mu_b, S_b).

    Dowson & Landau 1982; Heusel et al. 2017. mu: [D], cov: [D, D] symmetric PSD.
    Tr (S_a S_b)^{1/2} = Tr (S_a^{1/2} S_b S_a^{1/2})^{1/2} (the two matrices are similar
    when S_a is invertible, and by continuity otherwise) = sum of the square roots of the
    eigenvalues of the symmetric PSD matrix S_a^{1/2} S_b S_a^{1/2}. Clipped at 0: the
    distance is never negative, and rounding can otherwise give -1e-12 for identical sets.

    >>> I = np.eye(2)
    >>> td.metrics.frechet_distance_gaussians(np.zeros(2), I, np.array([3.0, 4.0]), I)   # |mu_a - mu_b|^2 = 25
    25.0
    >>> round(td.metrics.frechet_distance_gaussians(np.zeros(2), I, np.zeros(2), 4 * I), 9)   # 2 + 8 - 2 * 2 * 2
    2.0
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = len(mu_a)
    if mu_a.shape != (d,) or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"expected mu_a, mu_b [D] and cov_a, cov_b [D, D] with one D, got shapes "
                         f"{mu_a.shape}, {cov_a.shape}, {mu_b.shape}, {cov_b.shape}")
    root_a = sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a                                     # symmetric PSD [D, D]
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()                  # Tr (S_a S_b)^{1/2}
    diff = mu_a - mu_b
    return max(0.0, float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt))


def gaussian_fit(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (divisor N - 1, as ``np.cov``) of feats [N, D], float64.

    >>> mean, cov = td.metrics.gaussian_fit(np.array([[0.0, 0.0], [2.0, 2.0]]))
    >>> mean.tolist(), cov.tolist()
    ([1.0, 1.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    x = np.asarray(feats, dtype=np.float64)
    centred = x - x.mean(axis=0)
    return x.mean(axis=0), centred.T @ centred / (len(x) - 1)


def frechet_distance(feats_a, feats_b) -> float:
    """The Frechet distance between Gaussians fitted to two sets of features [N_a, D], [N_b, D]
    (``frechet_distance_gaussians`` of their ``gaussian_fit``). Symmetric and >= 0; biased
    upward at small N, so compare it only with distances at the same N.

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(500, 3)), rng.normal(size=(500, 3))
    >>> bool(td.metrics.frechet_distance(a, b) < 0.1), round(td.metrics.frechet_distance(a, a), 9)
    (True, 0.0)
    """
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        f = np.asarray(f)
        if f.ndim != 2 or len(f) < 2 or not np.issubdtype(f.dtype, np.number) or not np.isfinite(f).all():
            raise ValueError(f"{name} must be finite numbers of shape [N, D] with N >= 2, got dtype "
                             f"{f.dtype} and shape {f.shape}")
    if np.shape(feats_a)[1] != np.shape(feats_b)[1]:
        raise ValueError(f"feats_a and feats_b must have the same number of features, got "
                         f"{np.shape(feats_a)[1]} and {np.shape(feats_b)[1]}")
    return frechet_distance_gaussians(*gaussian_fit(feats_a), *gaussian_fit(feats_b))


__all__ = ["energy_distance", "mode_counts", "mode_coverage", "mode_precision", "frechet_distance",
           "frechet_distance_gaussians", "gaussian_fit", "sqrtm_psd"]
