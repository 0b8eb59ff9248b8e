"""Fit: the result of EM, its diagnostics, and an exact JSON round trip."""

import json
import math

import numpy as np

from .errors import DataError


class Fit:
    """A fitted model.

    Attributes
    ----------
    model : Model
    params : dict
        ``{node: {param: ndarray}}``, shapes as the contract gives them; free
        parameters from ``[params]`` at the top level as floats.
    loglik : float
        Observed-data log-likelihood at ``params`` (weighted sum over rows).
    history : list of float
        The EM objective at the parameters after 0, 1, ..., n_iter iterations;
        non-decreasing. ``history[-1]`` is the objective at ``params``.
    converged : bool
    n_iter : int
        Number of EM iterations (M-steps) run.
    n_observations : float
        Total row weight (the number of rows when unweighted), used by BIC.
    hard : bool
        Whether classification EM produced it (then history holds the
        complete-data objective at the chosen configurations).
    log_prior : float
        The log prior density at ``params`` (0 without priors); the objective
        in ``history`` is ``loglik + log_prior`` under MAP-EM.
    """

    def __init__(self, model, params, loglik, history, converged, n_iter, n_observations, hard=False,
                 log_prior=0.0):
        self.model = model
        self.params = params
        self.loglik = loglik
        self.history = list(history)
        self.converged = bool(converged)
        self.n_iter = int(n_iter)
        self.n_observations = float(n_observations)
        self.hard = bool(hard)
        self.log_prior = float(log_prior)

    @property
    def n_parameters(self):
        """Number of free parameters (probability rows count k - 1, symmetric matrices d(d+1)/2)."""
        return self.model.compiled.n_free()

    def bic(self):
        """Bayesian information criterion, -2 loglik + n_parameters log(n); lower is better."""
        return -2.0 * self.loglik + self.n_parameters * math.log(self.n_observations)

    def aic(self):
        """Akaike information criterion, -2 loglik + 2 n_parameters; lower is better."""
        return -2.0 * self.loglik + 2.0 * self.n_parameters

    def posterior(self, data, weights=None):
        """Posterior marginals of the latent nodes for each row of ``data``.

        Returns
        -------
        dict of str to ndarray of shape (n_rows, k)
        """
        from .data import node_data
        from .inference import posterior_marginals, prepare_rows
        compiled = self.model.compiled
        rows = prepare_rows(compiled, node_data(self.model, data, weights))
        params = compiled.to_internal(self.params, rows.shifts)
        marginals, _ = posterior_marginals(compiled, rows, params)
        return marginals

    def score(self, data, weights=None):
        """Observed-data log-likelihood of ``data`` at the fitted parameters (weighted sum)."""
        from .data import node_data
        from .inference import expected_statistics, prepare_rows
        compiled = self.model.compiled
        rows = prepare_rows(compiled, node_data(self.model, data, weights))
        params = compiled.to_internal(self.params, rows.shifts)
        return float(expected_statistics(compiled, rows, params)[1])

    def top(self, node, n=10, labels=None):
        """The most probable categories of a categorical node, for each value of its parents.

        For the topic model, ``top("word")`` gives the top words of each topic and
        ``top("topic")`` the main topics of each document.

        Parameters
        ----------
        node : str
            A categorical node.
        n : int
            How many categories per parameter set.
        labels : sequence of str, optional
            A name per category (a vocabulary); default: the category numbers.

        Returns
        -------
        list of list of (label, probability)
            One list per parameter set, in the order of the flattened parent values
            (a single list when the node has no parents).
        """
        if node not in self.params or "probs" not in self.params[node]:
            raise DataError(f"'{node}' is not a categorical node of the model")
        probs = np.asarray(self.params[node]["probs"])
        k = probs.shape[-1]
        if labels is not None and len(labels) != k:
            raise DataError(f"{len(labels)} labels given for node '{node}' with {k} categories")
        names = list(labels) if labels is not None else list(range(k))
        rows = probs.reshape(-1, k)
        order = np.argsort(-rows, axis=1, kind="stable")[:, :n]
        listed = [[(names[j], float(row[j])) for j in top] for row, top in zip(rows, order)]
        return listed[0] if probs.ndim == 1 else listed

    def to_dict(self):
        """The result as plain JSON types: loglik, n_iter, converged, history, params, model."""
        return {
            "loglik": self.loglik,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "history": list(self.history),
            "n_observations": self.n_observations,
            "hard": self.hard,
            "log_prior": self.log_prior,
            "bic": self.bic(),
            "aic": self.aic(),
            "params": {node: {name: np.asarray(value).tolist() for name, value in params.items()}
                       if isinstance(params, dict) else float(params)
                       for node, params in self.params.items()},
            "model": self.model.to_spec(),
        }

    def save(self, path):
        """Write the fit as JSON; floats are written exactly (shortest round-trip repr)."""
        with open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=1, allow_nan=True)

    @classmethod
    def load(cls, path, model=None):
        """Read a fit written by ``save``; the model is rebuilt from the stored declaration."""
        from .spec import model_from_spec
        try:
            with open(path) as handle:
                stored = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read a fit: {exc}") from None
        if model is None:
            model = model_from_spec(stored["model"], source=str(path))
        params = {node: {name: np.asarray(value, dtype=float) for name, value in values.items()}
                  if isinstance(values, dict) else float(values)
                  for node, values in stored["params"].items()}
        return cls(model=model, params=params, loglik=stored["loglik"], history=stored["history"],
                   converged=stored["converged"], n_iter=stored["n_iter"],
                   n_observations=stored["n_observations"], hard=stored.get("hard", False),
                   log_prior=stored.get("log_prior", 0.0))

    def __repr__(self):
        return (f"Fit(model={self.model.name!r}, loglik={self.loglik:.6g}, n_iter={self.n_iter}, "
                f"converged={self.converged})")
