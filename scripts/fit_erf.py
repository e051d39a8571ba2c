#!/usr/bin/env python3
"""Fits the rational approximation of erf in crates/kernels/src/math.rs.

erf(x) ~ x * P(x^2) / Q(x^2) on [0, C] (erf is odd; beyond C = 3.925 it rounds to 1 in f32),
P of degree 5 and Q of degree 5 with Q(0) = 1, by weighted linear least squares on
x * P - erf(x) * Q = erf(x) - (q0 = 1 term), reweighted towards the largest errors (Lawson's
iteration) to approach the minimax fit. Prints the coefficients and the fit's largest error in
float64. Needs numpy (e.g. .venv-peers/bin/python scripts/fit_erf.py).
"""
from math import erf

import numpy as np

C = 3.925
N, M = 5, 5


def main() -> None:
    xs = np.unique(
        np.concatenate(
            [np.cos(np.linspace(0, np.pi, 4000)) * C / 2 + C / 2, np.linspace(0, C, 4000)]
        )
    )
    e = np.array([erf(x) for x in xs])
    t = xs**2
    w = np.ones_like(xs)
    best = None
    for _ in range(40):
        a = np.hstack(
            [
                np.stack([xs * t**i for i in range(N + 1)], 1),
                np.stack([-e * t**j for j in range(1, M + 1)], 1),
            ]
        )
        sol, *_ = np.linalg.lstsq(a * w[:, None], e * w, rcond=None)
        p, q = sol[: N + 1], np.concatenate([[1.0], sol[N + 1 :]])
        den = np.polyval(q[::-1], t)
        err = xs * np.polyval(p[::-1], t) / den - e
        if best is None or np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), p, q)
        w = w * np.abs(err) ** 0.5 / np.abs(den)
        w /= w.max()
    worst, p, q = best
    print(f"largest |error| on [0, {C}]: {worst:.3e}")
    print("P:", ", ".join(f"{v:.9e}" for v in p))
    print("Q:", ", ".join(f"{v:.9e}" for v in q))


if __name__ == "__main__":
    main()
