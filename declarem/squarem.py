"""SQUAREM: squared extrapolation of the EM fixed-point map (Varadhan & Roland 2008, scheme S3).

From theta0, two EM steps give theta1 and theta2; with r = theta1 - theta0 and
v = theta2 - 2 theta1 + theta0 the extrapolated point is
    theta' = theta0 - 2 a r + a^2 v,   a = -||r|| / ||v||  (a <= -1),
and one more EM step from theta' stabilises it. Safeguard: the cycle keeps
theta'' = EM(theta') only if theta' lies in every parameter's domain and
theta''s objective is at least theta0's (Varadhan and Roland's monotonicity
check); otherwise a is halved towards -1, and finally the plain EM point theta2
is kept. So the objective reported never falls. (Checking against theta2's
objective instead, a stronger floor, would cost an E-step in every cycle for a
point that a successful jump leaves unused.)

The coefficients of theta0, theta1, theta2 in theta' sum to one, so probability
vectors keep summing to one; positivity and positive definiteness are checked.
"""

import numpy as np

from .errors import DeclaremError
from .monitor import EMRun
from .params import flatten_params, params_vector

BACKTRACKS = 4


def _valid(compiled, params, shifts):
    """Whether extrapolated parameters lie in their domains (the open domains a user's init must lie in)."""
    try:
        if compiled.free_names:
            compiled.block.check({name: params[name] for name in compiled.free_names}, "extrapolated parameters")
        return all(factor.in_domain(params[name], shifts.get(name)) for name, factor in compiled.factors.items()
                   if not getattr(factor, "expressed", False))
    except (DeclaremError, np.linalg.LinAlgError, ValueError):
        return False


def run_squarem(compiled, shifts, params, max_iter, tol, hard, reg_covar, progress, estep, statistics, mstep,
                monitor, objective_at):
    """Accelerated EM from ``params``; see ``em.run_em`` for what it returns.

    ``estep(params)`` gives the expected statistics and the objective, ``statistics(params)``
    the statistics alone: the first EM step's, the plain EM point's and the extrapolated point's
    objectives are not used (the plain point's only when it is kept, which a successful jump
    makes rare). ``objective_at(params)`` gives the objective alone, for a run that ends on an
    EM step at ``max_iter``. ``n_iter`` counts EM steps (M-steps); ``history`` holds the
    objective at the start and after each accepted cycle.
    """
    stats, objective = estep(params)
    monitor.record(objective, params)
    n_iter = 0
    converged = False
    while n_iter < max_iter:
        first = mstep(stats, params)
        n_iter += 1
        if n_iter >= max_iter:
            params = first
            converged = monitor.iteration(n_iter, objective_at(first), progress, params)
            break
        first_stats = statistics(first)
        second = mstep(first_stats, first)
        n_iter += 1
        accepted = None
        start, rebuild = flatten_params(params)
        one, two = params_vector(first), params_vector(second)
        r = one - start
        v = two - 2.0 * one + start
        norm_v = np.linalg.norm(v)
        step = -np.linalg.norm(r) / norm_v if norm_v > 0 else -1.0
        for _ in range(BACKTRACKS + 1):
            if step > -1.0 or n_iter >= max_iter:
                break
            extrapolated = rebuild(start - 2.0 * step * r + step * step * v)
            # Probabilities written in free parameters follow the extrapolated parameters.
            compiled.set_free(extrapolated, {n: extrapolated[n] for n in compiled.free_names})
            if _valid(compiled, extrapolated, shifts):
                try:
                    jump_stats = statistics(extrapolated)
                except DeclaremError:
                    jump_stats = None
                if jump_stats is not None:
                    stabilised = mstep(jump_stats, extrapolated)
                    n_iter += 1
                    stabilised_stats, stabilised_objective = estep(stabilised)
                    if stabilised_objective >= objective:
                        accepted = (stabilised, stabilised_stats, stabilised_objective)
                        break
            step = (step - 1.0) / 2.0
        if accepted is None:
            # The plain EM point kept: its statistics and objective start the next cycle.
            accepted = (second,) + tuple(estep(second))
        params, stats, objective = accepted
        # The distance left is estimated from the cycle's two plain EM steps: the jumps between
        # accepted points vary in length from cycle to cycle, and their ratio says nothing of it.
        if monitor.iteration(n_iter, objective, progress, params, em_steps=(start, one, two)):
            converged = True
            break
    return EMRun(params, monitor.history, converged, n_iter)
