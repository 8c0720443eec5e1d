"""Ordinary differential equation solvers for dy/dt = f(t, y), written out (NumPy only).

The probability-flow ODE (tinydiff/sde.py) is solved to sample and to compute exact
likelihoods (tinydiff/likelihood.py). A state y is an array [B, N] (a batch of flattened
states); f(t, y) returns the same shape. Time may run down (sampling, t = 1 -> t_min) or
up (likelihood, t_min -> 1): the step h carries the sign.

    euler_step   y + h f(t, y)                                  1 call   (order 1)
    heun_step    the trapezoidal predictor-corrector            2 calls  (order 2)
    rk4_step     the classical Runge-Kutta method               4 calls  (order 4)
    solve_fixed  one of them on a given time grid
    rk45         Dormand & Prince (1980) 5(4) with adaptive steps: 6 calls a step (the 7th
                 is the next step's first, "first same as last"), the local error estimated by
                 the difference of the embedded 5th- and 4th-order solutions and kept below
                 atol + rtol |y| in the root-mean-square over every number of the state,
                 the rule of Hairer, Norsett & Wanner (1993, II.4), also scipy's RK45.

Every solver returns {"y": the state at the end, "nfe": the number of calls of f,
"times", "states": the accepted steps}; the number of function evaluations is the cost
of an ODE likelihood (each is one network call).
"""
from __future__ import annotations

import numpy as np


def euler_step(f, t, y, h):
    """y(t + h) ~ y + h f(t, y): Euler's method, local error O(h^2).

    >>> td.ode.euler_step(lambda t, y: -y, 0.0, np.ones((1, 1)), 0.1).tolist()     # 1 - 0.1
    [[0.9]]
    """
    return y + h * f(t, y)


def heun_step(f, t, y, h):
    """Heun's method (the explicit trapezoid rule), local error O(h^3):

        k1 = f(t, y),  k2 = f(t + h, y + h k1),  y(t + h) ~ y + h (k1 + k2) / 2

    >>> td.ode.heun_step(lambda t, y: -y, 0.0, np.ones((1, 1)), 0.1).round(6).tolist()   # e^-0.1 = 0.904837
    [[0.905]]
    """
    k1 = f(t, y)
    k2 = f(t + h, y + h * k1)
    return y + 0.5 * h * (k1 + k2)


def rk4_step(f, t, y, h):
    """The classical 4th-order Runge-Kutta step, local error O(h^5):

        k1 = f(t, y), k2 = f(t + h/2, y + h k1/2), k3 = f(t + h/2, y + h k2/2), k4 = f(t + h, y + h k3)
        y(t + h) ~ y + h (k1 + 2 k2 + 2 k3 + k4) / 6

    >>> td.ode.rk4_step(lambda t, y: -y, 0.0, np.ones((1, 1)), 0.1).round(6).tolist()    # e^-0.1 = 0.9048374
    [[0.904838]]
    """
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


FIXED_STEPS = {"euler": (euler_step, 1), "heun": (heun_step, 2), "rk4": (rk4_step, 4)}


def solve_fixed(f, y0, times, method="rk4", progress=None):
    """Integrate dy/dt = f(t, y) from times[0] to times[-1] through the given grid with one
    fixed-step method ("euler", "heun" or "rk4"). y0: [B, N]. Returns {"y", "nfe", "times", "states"}.

    >>> sol = td.ode.solve_fixed(lambda t, y: -y, np.ones((1, 1)), np.linspace(0, 1, 11), "rk4")
    >>> round(float(sol["y"][0, 0]), 6), round(float(np.exp(-1)), 6), sol["nfe"]    # y = e^-t
    (0.36788, 0.367879, 40)
    """
    if method not in FIXED_STEPS:
        raise ValueError(f"method: expected one of {sorted(FIXED_STEPS)} or 'rk45', got {method!r}")
    step, calls = FIXED_STEPS[method]
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times: expected a 1-D grid of at least 2 times, got shape {times.shape}")
    y, states = y0, [y0]
    n = len(times) - 1
    for i in range(n):
        y = step(f, float(times[i]), y, float(times[i + 1] - times[i]))
        states.append(y)
        if progress is not None:
            progress(i + 1, n)
    return {"y": y, "nfe": calls * n, "times": times, "states": states}


# Dormand & Prince (1980), RK5(4)7M: the nodes c, the matrix a, the 5th-order weights b and the
# error weights e = b - b* (b* the embedded 4th-order weights; the 7th stage is f at the new y).
DP_C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1])
DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]]
DP_B = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84])
DP_E = np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40])


def error_norm(err, y, y_new, rtol, atol):
    """sqrt(mean((err / (atol + rtol max(|y|, |y_new|)))^2)) over every number: <= 1 accepts a step.

    >>> td.ode.error_norm(np.full((1, 2), 1e-6), np.ones((1, 2)), np.ones((1, 2)), rtol=1e-6, atol=0.0)
    1.0
    """
    scale = atol + rtol * np.maximum(np.abs(y), np.abs(y_new))
    return float(np.sqrt(np.mean((err / scale) ** 2)))


def rk45(f, y0, t0, t1, rtol=1e-5, atol=1e-5, h0=None, max_steps=10_000, progress=None):
    """Integrate dy/dt = f(t, y) from t0 to t1 with Dormand-Prince 5(4) and adaptive steps.

    A step of size h is accepted when its estimated local error has error_norm <= 1; either
    way the next h is h * clip(0.9 err^(-1/5), 0.2, 10) (a rejected step is retried
    smaller). The first h: Hairer et al.'s rule (II.4), h ~ 0.01 |y| / |f|, refined by one
    more call. y0: [B, N]. progress(t fraction done in thousandths, 1000) after each step.
    Returns {"y", "nfe", "times", "states", "rejected"}.

    >>> sol = td.ode.rk45(lambda t, y: -y, np.ones((1, 1)), 0.0, 1.0, rtol=1e-8, atol=1e-8)
    >>> bool(abs(sol["y"][0, 0] - np.exp(-1)) < 1e-7), sol["nfe"] < 200
    (True, True)
    """
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol, atol: expected positive tolerances, got {rtol!r}, {atol!r}")
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    nfe = 0

    def call(t, y):
        nonlocal nfe
        nfe += 1
        return f(t, y)

    t, y = float(t0), np.asarray(y0, dtype=np.float64)
    k1 = call(t, y)
    if h0 is None:                                            # Hairer, Norsett & Wanner, II.4 (the starting step)
        scale = atol + rtol * np.abs(y)
        d0, d1 = np.sqrt(np.mean((y / scale) ** 2)), np.sqrt(np.mean((k1 / scale) ** 2))
        h = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h = min(h, span)
        d2 = np.sqrt(np.mean(((call(t + direction * h, y + direction * h * k1) - k1) / scale) ** 2)) / h
        h1 = max(1e-6, h * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
        h = min(100 * h, h1, span)
    else:
        h = abs(float(h0))
    times, states, rejected = [t], [y], 0
    while direction * (t1 - t) > 1e-12 * max(1.0, span):
        if len(times) > max_steps:
            raise RuntimeError(f"rk45: more than {max_steps} steps from t = {t0} to {t1} (stopped at t = {t:.6g}); "
                               "the ODE is stiff here or the tolerances are too tight")
        h = min(h, abs(t1 - t))
        hs = direction * h
        k = [k1]
        for c, a in zip(DP_C[1:], DP_A[1:]):                  # stages 2..6
            k.append(call(t + c * hs, y + hs * sum(aj * kj for aj, kj in zip(a, k))))
        y_new = y + hs * sum(b * kj for b, kj in zip(DP_B, k) if b != 0)
        k7 = call(t + hs, y_new)                              # first same as last: the next step's k1
        err = hs * sum(e * kj for e, kj in zip(DP_E, k + [k7]) if e != 0)
        norm = error_norm(err, y, y_new, rtol, atol)
        if norm <= 1.0:                                       # accept
            t, y, k1 = t + hs, y_new, k7
            times.append(t)
            states.append(y)
            h *= 10.0 if norm == 0 else min(10.0, 0.9 * norm ** -0.2)
            if progress is not None:
                progress(int(round(1000 * abs(t - t0) / span)), 1000)
        else:
            rejected += 1
            h *= max(0.2, 0.9 * norm ** -0.2)
    return {"y": y, "nfe": nfe, "times": np.array(times), "states": states, "rejected": rejected}


__all__ = ["euler_step", "heun_step", "rk4_step", "solve_fixed", "rk45", "error_norm"]
