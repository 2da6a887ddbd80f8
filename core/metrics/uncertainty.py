"""How sure a validation score is: a seeded bootstrap over the validation rows.

Each resample draws as many rows as there are, with replacement, and takes every system's mean score on
them; the 2.5th and 97.5th percentiles of those means are the 95 % interval. A difference between two
systems (the model minus the answer prefix, say) is computed on the same resampled rows for both, so the
rows that are hard for both cancel out: a paired interval, far narrower than the two intervals side by
side, with the share of resamples in which the difference is above 0. The seed is fixed, so a rerun on
the same answers writes the same figures.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


def _resampled_means(scores: dict[str, list[float]], resamples: int, seed: int) -> dict[str, np.ndarray]:
    rows = len(next(iter(scores.values()), []))
    picks = np.random.default_rng(seed).integers(0, rows, size=(resamples, rows))
    return {name: np.asarray(values, dtype=np.float64)[picks].mean(axis=1) for name, values in scores.items()}


def _bounds(means: np.ndarray) -> dict[str, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"low": float(low), "high": float(high)}


def bootstrap(
    scores: dict[str, list[float]],
    differences: dict[str, tuple[str, str]],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, dict[str, float]]:
    """The 95 % interval of each system's mean score (`scores`: one score a row, the same rows for every
    system) and, for each named difference (a, b) of `differences`, the paired interval of mean(a) - mean(b)
    with the share of resamples above 0. Empty where there are no rows."""
    if not scores or not len(next(iter(scores.values()))):
        return {}
    means = _resampled_means(scores, resamples, seed)
    found = {name: _bounds(values) for name, values in means.items()}
    for name, (a, b) in differences.items():
        paired = means[a] - means[b]
        found[name] = {**_bounds(paired), "share_above_0": float((paired > 0).mean())}
    return found
