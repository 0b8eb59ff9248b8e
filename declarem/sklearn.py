"""A scikit-learn estimator around a declared model: ``DeclaremEstimator``.

The estimator wraps a spec file, a networkx graph or a ``declarem.Model`` (by
default a Gaussian mixture as wide as the data) and follows scikit-learn's
conventions: hyperparameters in ``__init__``, ``fit(X)`` on a 2-D array or a
DataFrame, fitted attributes ending in ``_``, ``predict``, ``predict_proba``,
``score``, ``score_samples``, ``sample``, ``bic`` and ``aic`` as in
``sklearn.mixture.GaussianMixture``. It works in a ``Pipeline``, with
``clone``, ``GridSearchCV`` (over ``n_components`` among others), pickle and
joblib. docs/sklearn.md describes the choices it makes.

scikit-learn is an optional dependency: ``import declarem`` never imports it;
importing this module does, and needs scikit-learn 1.6 or later.
"""

import math
import numbers
import os
import warnings

import networkx as nx
import numpy as np

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("declarem.sklearn needs scikit-learn 1.6 or later: pip install 'scikit-learn>=1.6' "
                      f"({exc})") from exc

from .errors import ConvergenceWarning as DeclaremConvergenceWarning
from .model import Model
from .threads import usable_cores
from .spec import load_model

__all__ = ["DeclaremEstimator"]

#: Name of the default model's observed (vector normal) node.
DEFAULT_OBSERVED = "x"
COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
#: Seeds drawn from a generator or a RandomState lie in [0, SEED_BOUND).
SEED_BOUND = 2 ** 31 - 1


class DeclaremEstimator(DensityMixin, BaseEstimator):
    """A declared model fitted by EM, as a scikit-learn density estimator.

    Parameters
    ----------
    model : str, os.PathLike, networkx.DiGraph, declarem.Model or None
        The model: a TOML spec file, a graph, or a Model. None (default): a
        Gaussian mixture as wide as ``X``, a latent categorical node with
        ``n_components`` values (none when ``n_components`` is 1) and one
        observed normal node ``x`` over all columns of ``X``.
    n_components : int >= 1 or None
        Overrides the ``k`` of the ``target`` latent node (the model is rebuilt
        from its graph); 1 removes the node. None: the model's own ``k``, and 1
        for the default model.
    target : str or None
        The latent node that ``predict``, ``predict_proba``, ``sample``'s labels
        and ``n_components`` refer to. None: the model's only latent node (an
        error when it has several).
    columns : sequence of str or None
        The data column each column of ``X`` holds, in order. None: a
        DataFrame's column names, else the model's observed columns in the
        order of ``model.observed`` (``x_0 .. x_{D-1}`` for the default model).
    covariance_type : {"full", "diag", "tied", "spherical"} or None
        The default model's covariance (None: "full"); refused with a model.
    n_init : int
        Independent initialisations (declarem's ``restarts``); the best is kept.
    max_iter : int
        EM iterations at most per initialisation.
    tol : float
        Stop when the objective's relative change falls below ``tol``
        (declarem's convention, not scikit-learn's absolute per-row change).
    reg_covar : float
        Added to the diagonal of every normal node's covariance in the M-step.
    random_state : None, int, numpy.random.Generator or numpy.random.RandomState
        An int >= 0 is declarem's ``seed`` itself; None draws a seed from
        numpy's global RandomState, a Generator or RandomState draws one from
        itself, at each ``fit`` and ``sample``.
    verbose : int
        0 silent; 1 prints a line when a fit ends; 2 also one per EM iteration.
    warm_start : bool
        Start from the previous fit's parameters (one initialisation) when the
        declaration is unchanged since that fit.
    n_jobs : int or None
        Threads the E-step runs on (declarem's ``threads``): None takes declarem's
        default (``DECLAREM_THREADS``, else every usable core, as GaussianMixture's BLAS
        does), -1 every usable core; the fit does not depend on it.

    Attributes
    ----------
    model_ : declarem.Model
        The model fitted (with ``n_components`` applied).
    fit_ : declarem.Fit
    params_ : dict
        ``{node: {param: ndarray}}``, as ``fit_.params``.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        The final EM objective per unit of row weight (mean log-likelihood per
        row, plus the log prior's share under MAP), as GaussianMixture's.
    lower_bounds_ : list of float
        The same after 0, 1, ..., ``n_iter_`` iterations.
    n_components_ : int
        Values of the target node (1 when there is none).
    target_ : str or None
        The latent node ``predict`` reports; None when there is none.
    columns_ : list of str
        The data column of each column of ``X``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame with string column names.
    """

    def __init__(self, model=None, *, n_components=None, target=None, columns=None, covariance_type=None,
                 n_init=1, max_iter=1000, tol=1e-8, reg_covar=1e-6, random_state=None, verbose=0,
                 warm_start=False, n_jobs=None):
        self.model = model
        self.n_components = n_components
        self.target = target
        self.columns = columns
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.n_jobs = n_jobs

    # -- scikit-learn protocol --------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # NaN is a missing value, integrated out by the E-step.
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y=None, sample_weight=None, lengths=None):
        """Fit the model to ``X`` by EM.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            One row per observation; NaN where a value is missing.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights (counts); replaces a spec's ``[data] weights``.
        lengths : sequence of int, optional
            Rows per sequence, for a model with a chain.

        Returns
        -------
        self

        Warns
        -----
        ConvergenceWarning
            When ``max_iter`` iterations ran without convergence.
        """
        self._check_options()
        X = self._validate(X, reset=True)
        names = self._column_names(X.shape[1])
        model, target, k = self._build(X.shape[1], names)
        declaration = repr(model.to_spec())
        init, restarts = None, self.n_init
        if self.warm_start and getattr(self, "_declaration", None) == declaration and hasattr(self, "fit_"):
            init, restarts = self.fit_.params, 1
        weights = _checked_weights(sample_weight, X.shape[0])
        if weights is None and model.data_info.get("weights"):
            weights = np.ones(X.shape[0])   # X holds the declared columns only, not a weights column
        with warnings.catch_warnings():
            # Said below as scikit-learn's ConvergenceWarning, which scikit-learn's tools expect.
            warnings.simplefilter("ignore", DeclaremConvergenceWarning)
            fit = model.fit(_as_data(X, names), weights=weights, init=init, max_iter=self.max_iter, tol=self.tol,
                            seed=_seed(self.random_state), restarts=restarts, reg_covar=self.reg_covar,
                            progress=self._progress if self.verbose >= 2 else None, lengths=lengths,
                            threads=self._threads())
        self.model_ = model
        self.fit_ = fit
        self.params_ = fit.params
        self.converged_ = fit.converged
        self.n_iter_ = fit.n_iter
        self.lower_bounds_ = [value / fit.n_observations for value in fit.history]
        self.lower_bound_ = self.lower_bounds_[-1]
        self.n_components_ = k
        self.target_ = target
        self.columns_ = list(names)
        self._declaration = declaration
        if self.verbose >= 1:
            print(f"declarem: {'converged' if fit.converged else 'stopped'} after {fit.n_iter} iterations, "
                  f"log-likelihood {fit.loglik:.6f}")
        if not fit.converged and fit.n_iter >= self.max_iter:
            warnings.warn(f"EM did not converge within max_iter={self.max_iter} iterations (relative change of "
                          f"the objective still above tol={self.tol:g}); raise max_iter or tol, or try other "
                          "initialisations (n_init, random_state)", ConvergenceWarning, stacklevel=2)
        return self

    def predict_proba(self, X, lengths=None):
        """Posterior probabilities of the target node's values for each row.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
        lengths : sequence of int, optional
            Rows per sequence, for a model with a chain.

        Returns
        -------
        ndarray of shape (n_samples, n_components_)
            Rows sum to 1 (all ones in one column when there is no target node).
        """
        data, n_rows = self._data(X)
        if self._no_target():
            return np.ones((n_rows, 1))
        return self.fit_.posterior(data, lengths=lengths)[self.target_]

    def predict(self, X, lengths=None):
        """The target node's value in each row's most probable latent configuration.

        With one latent node and no chain this is the argmax of ``predict_proba``;
        with several, the most probable joint configuration read off at the target;
        for a chain, the most probable path (Viterbi).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
        lengths : sequence of int, optional

        Returns
        -------
        ndarray of int, shape (n_samples,)
        """
        data, n_rows = self._data(X)
        if self._no_target():
            return np.zeros(n_rows, dtype=np.intp)
        return self.fit_.decode(data, lengths=lengths)[self.target_]

    def score_samples(self, X):
        """Log-likelihood of each row (the observed-data log-density at the fitted parameters).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)

        Raises
        ------
        ValueError
            For a model with a chain, whose likelihood does not split into rows.
        """
        data, _ = self._data(X)
        if self.model_.chain is not None:
            raise ValueError(f"score_samples: model '{self.model_.name}' has a chain (node '{self.model_.chain}'), "
                             "whose log-likelihood belongs to whole sequences, not rows; use score(X, lengths=...)")
        return self.fit_.row_loglik(data)

    def score(self, X, y=None, sample_weight=None, lengths=None):
        """Mean log-likelihood per row of ``X`` (weighted by ``sample_weight`` if given).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
        lengths : sequence of int, optional
            Rows per sequence, for a model with a chain (then the total over the
            sequences divided by the number of rows).

        Returns
        -------
        float
        """
        if getattr(self, "model_", None) is not None and self.model_.chain is not None:
            data, n_rows = self._data(X)
            if sample_weight is not None:
                raise ValueError("score: rows of a chain take no weights; pass sample_weight=None")
            return self.fit_.score(data, lengths=lengths) / n_rows
        check_is_fitted(self)
        per_row = self.score_samples(X)
        weights = _checked_weights(sample_weight, len(per_row))
        return float(np.average(per_row, weights=weights))

    def bic(self, X, lengths=None):
        """Bayesian information criterion on ``X``: -2 log-likelihood + n_parameters log(n_samples).

        Lower is better, as in scikit-learn.

        Returns
        -------
        float
        """
        n_rows, loglik = self._total_loglik(X, lengths)
        return -2.0 * loglik + self.fit_.n_parameters * math.log(n_rows)

    def aic(self, X, lengths=None):
        """Akaike information criterion on ``X``: -2 log-likelihood + 2 n_parameters; lower is better.

        Returns
        -------
        float
        """
        _, loglik = self._total_loglik(X, lengths)
        return -2.0 * loglik + 2.0 * self.fit_.n_parameters

    def sample(self, n_samples=1, lengths=None):
        """Draw rows from the fitted model.

        The seed comes from ``random_state`` as in ``fit`` (an int gives the
        same rows at every call).

        Parameters
        ----------
        n_samples : int >= 1
        lengths : sequence of int, optional
            Rows per sequence, for a model with a chain.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Columns in the order of ``columns_``.
        y : ndarray of int, shape (n_samples,)
            The target node's drawn values (zeros when there is none).
        """
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, found {n_samples!r}")
        drawn = self.model_.sample(int(n_samples), self.fit_.params, seed=_seed(self.random_state),
                                   lengths=lengths)
        X = np.column_stack([np.asarray(drawn[name], dtype=float) for name in self.columns_])
        if self._no_target():
            return X, np.zeros(int(n_samples), dtype=np.intp)
        return X, np.asarray(drawn[self.target_]).astype(np.intp)

    # -- helpers -------------------------------------------------------------------------------

    def _threads(self):
        """declarem's ``threads`` for ``n_jobs``."""
        if self.n_jobs is None:
            return None
        if self.n_jobs == -1:
            return usable_cores()
        return int(self.n_jobs)

    def _check_options(self):
        for name, low in (("n_init", 1), ("max_iter", 0), ("verbose", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, found {value!r}")
        for name in ("tol", "reg_covar"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, found {value!r}")
        jobs = self.n_jobs
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral)
                                 or not (jobs >= 1 or jobs == -1)):
            raise ValueError(f"n_jobs must be a positive integer, -1 (every core) or None, found {jobs!r}")
        k = self.n_components
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"n_components must be an integer >= 1 or None, found {k!r}")
        if self.covariance_type is not None:
            if self.model is not None:
                raise ValueError("covariance_type applies to the default Gaussian mixture only; with a model, "
                                 "declare 'covariance' on its normal nodes")
            if self.covariance_type not in COVARIANCE_TYPES:
                raise ValueError(f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}, "
                                 f"found {self.covariance_type!r}")
        if self.target is not None and not isinstance(self.target, str):
            raise ValueError(f"target must be a latent node's name or None, found {self.target!r}")

    def _validate(self, X, reset):
        return validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite="allow-nan")

    def _column_names(self, n_features):
        """The data column of each column of X."""
        if self.columns is not None:
            if isinstance(self.columns, str) or not all(isinstance(c, str) for c in self.columns):
                raise ValueError(f"columns must be a list of column names (strings), found {self.columns!r}")
            names = list(self.columns)
        elif hasattr(self, "feature_names_in_"):
            names = [str(c) for c in self.feature_names_in_]
        elif self.model is None:
            names = [f"{DEFAULT_OBSERVED}_{j}" for j in range(n_features)]
        else:
            names = _observed_columns(_base_model(self.model))
        if len(names) != n_features:
            raise ValueError(f"X has {n_features} columns but {len(names)} column names are known "
                             f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); pass columns=[...] "
                             "naming each column of X")
        if len(set(names)) != len(names):
            twice = next(c for c in names if names.count(c) > 1)
            raise ValueError(f"columns names '{twice}' twice; each column of X needs its own name")
        return names

    def _build(self, n_features, names):
        """The model to fit, its target node (or None) and the target's number of values."""
        if self.model is None:
            return _default_model(names, self.n_components or 1, self.covariance_type or "full")
        base = _base_model(self.model)
        target = self.target
        if target is None:
            if len(base.latent) > 1:
                raise ValueError(f"model '{base.name}' has latent nodes {', '.join(base.latent)}; pass "
                                 "target=NAME to say which one predict reports")
            target = base.latent[0] if base.latent else None
        elif target not in base.latent:
            raise ValueError(f"target '{target}' is not a latent node of model '{base.name}'; its latent nodes "
                             f"are {', '.join(base.latent) or 'none'}")
        graph = base.graph.copy()
        k = 1 if target is None else base.nodes[target].k
        if self.n_components is not None and self.n_components != k:
            if target is None:
                raise ValueError(f"n_components={self.n_components}: model '{base.name}' has no latent node "
                                 "whose number of values it could set")
            k = int(self.n_components)
            if k == 1:
                _drop_node(graph, target)
            else:
                graph.nodes[target]["k"] = k
        # Always a fresh Model: the one the user passed stays as it was (uncompiled, picklable).
        return Model(graph, source=base.source, base_dir=base.base_dir), target, k

    def _no_target(self):
        return self.target_ is None or self.target_ not in self.model_.nodes

    def _data(self, X):
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return _as_data(X, self.columns_), X.shape[0]

    def _total_loglik(self, X, lengths):
        data, n_rows = self._data(X)
        return n_rows, self.fit_.score(data, lengths=lengths)

    def _progress(self, iteration, objective, change):
        print(f"declarem: iteration {iteration}: objective {objective:.6f} (change {change:.3g})")


# -- module helpers ---------------------------------------------------------------------------------


def _base_model(model):
    """The declared model a ``model`` parameter names, as a Model."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nx.DiGraph):
        return Model(model)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise ValueError(f"model must be a spec file path, a networkx.DiGraph, a declarem.Model or None, found "
                     f"{type(model).__name__}")


def _default_model(names, k, covariance):
    """A Gaussian mixture over the columns ``names``: (model, latent node name or None, k)."""
    graph = nx.DiGraph()
    graph.graph["model"] = {"name": "gaussian_mixture"}
    latent = None
    if k > 1:
        latent = next(name for name in ("z", *(f"z{i}" for i in range(len(names) + 1))) if name not in names)
        graph.add_node(latent, family="categorical", latent=True, k=int(k))
    attributes = {"family": "normal", "columns": list(names)}
    if len(names) > 1:
        attributes["covariance"] = covariance
    graph.add_node(DEFAULT_OBSERVED, **attributes)
    if latent is not None:
        graph.add_edge(latent, DEFAULT_OBSERVED)
    return Model(graph, source="default Gaussian mixture"), latent, int(k)


def _drop_node(graph, name):
    """Remove a node and every mention of it in its children's ``parents``."""
    for child in list(graph.successors(name)):
        declared = graph.nodes[child].get("parents")
        if declared is not None:
            graph.nodes[child]["parents"] = [p for p in declared if p != name]
    graph.remove_node(name)


def _observed_columns(model):
    """The data columns a model's observed nodes read, in the order of ``model.observed``."""
    names = []
    for name in model.observed:
        node = model.nodes[name]
        if node.columns:
            names += list(node.columns)
        elif node.dim > 1:
            names += [f"{name}_{j}" for j in range(node.dim)]
        else:
            names.append(name)
    return names


def _as_data(X, names):
    return {name: X[:, j] for j, name in enumerate(names)}


def _checked_weights(sample_weight, n_rows):
    """Row weights as a float array of shape (n_rows,), or None; ValueError naming what is wrong."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight, dtype=float)
    if weights.shape != (n_rows,):
        raise ValueError(f"sample_weight has shape {weights.shape}; expected ({n_rows},), one weight per row")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if len(bad):
        raise ValueError(f"sample_weight[{bad[0]}] = {weights[bad[0]]:g}; weights must be finite and >= 0")
    if not weights.sum() > 0:
        raise ValueError("sample_weight sums to zero; at least one row needs positive weight")
    return weights


def _seed(random_state):
    """declarem's seed (an int >= 0) from scikit-learn's random_state."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be None, an integer >= 0 or a generator, found {random_state!r}")
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(SEED_BOUND))
    if random_state is None or isinstance(random_state, np.random.RandomState):
        return int(check_random_state(random_state).randint(SEED_BOUND))
    raise ValueError(f"random_state must be None, an integer >= 0, a numpy Generator or RandomState, found "
                     f"{type(random_state).__name__}")
