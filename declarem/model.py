"""Model: the validated DAG, each node's role, family and parameter shapes.

A model is built from a networkx DiGraph whose node attributes follow the
contract (``family``, ``latent``, ``k``, ``parents``, ``columns``, ``dim``,
``covariance``, ``trials``). A TOML spec becomes such a graph first
(``declarem.spec``), so both routes meet here and are validated once.
"""

import difflib
import math
from contextlib import contextmanager
from dataclasses import dataclass

import networkx as nx
import numpy as np


from .errors import SizeError, SpecError
from .expressions import RESERVED_NAMES
from .families import FamilyRegistry
from .families.family import NODE_KEYS
from .families.builtin import PRIOR_TABLE
from .resources import check_model_size, check_sample_size
from .tables import DATA_KEYS, FIT_DEFAULTS, MODEL_KEYS, check_table, did_you_mean, type_name

GRAPH_KEYS = ("families", "params", "model", "data", "fit")
COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
DISCRETE_KINDS = ("indicator", "table")
PARAM_DOMAINS = ("real", "positive", "unit")
#: Largest value of a family constant (binomial trials): the derivation's checks sum over its support.
MAX_CONSTANT = 10 ** 7


def _lag_edges_as_attributes(graph, source):
    """Turn lag edges (``add_edge("z", "z", lag=1)``) into the ``lagged`` attribute of their target.

    A lag edge says that the target at step t depends on the source at step t - 1; it is not
    part of the within-step DAG, so it leaves the graph's edges.
    """
    for parent, child, data in list(graph.edges(data=True)):
        lag = data.get("lag")
        if lag is None:
            continue
        if isinstance(lag, bool) or lag != 1:
            raise SpecError(f"{source}: edge {parent} -> {child}: lag {lag!r} is not supported; lags are 1 "
                            "(the previous step)")
        lagged = list(graph.nodes[child].get("lagged") or [])
        if parent not in lagged:
            lagged.append(parent)
        graph.nodes[child]["lagged"] = lagged
        graph.remove_edge(parent, child)
    return graph


@contextmanager
def _memory_as_size_error(model, doing):
    """Report running out of memory as a SizeError: the estimates refuse what clearly cannot fit."""
    try:
        yield
    except MemoryError:
        raise SizeError(f"{model.source}: out of memory while {doing}; the model or the data is too large "
                        "for the memory available: reduce the nodes' 'k', the dimensions or the rows") from None


@dataclass(frozen=True, eq=False)
class Node:
    """One validated variable of the model.

    Attributes
    ----------
    name : str
    family : Family
        The family the node names (for a vector normal, still ``normal``).
    latent : bool
    k : int or None
        Number of categories (categorical nodes).
    parents : tuple of str
        The discrete parents, in the order that indexes the parameters.
    columns : tuple of str or None
        Data columns of a vector node, when declared.
    dim : int
        Number of columns (1 for a scalar node).
    covariance : str or None
        For a normal node with dim > 1.
    constants : tuple of (str, number)
        Values of the family's constants (binomial ``trials``).
    prior : tuple of (str, ndarray) or None
        A conjugate prior's name and its hyperparameter, broadcastable to the
        node's parameter shape (parents..., k).
    probs : tuple of sympy.Expr or None
        A categorical node's probabilities as expressions in free parameters.
    table : tuple of int or None
        A deterministic node's map from its parent's category to its own.
    chain : bool
        Whether the node's previous value is a parent (a lag edge to itself): a hidden
        Markov chain with parameters ``start`` and ``probs``.
    covariates : tuple of str
        The continuous parents, in ``parents`` order: the node's linear parameter is
        ``intercept + coef . (their columns)`` through the family's canonical link.
    shares : str or None
        The node whose parameters this one uses (``shares = "OTHER"``): one set of
        parameters for both, fitted from their pooled statistics.
    """

    name: str
    family: object
    latent: bool
    k: int | None
    parents: tuple
    columns: tuple | None
    dim: int
    covariance: str | None
    constants: tuple
    prior: tuple | None = None

    probs: tuple | None = None
    table: tuple | None = None
    chain: bool = False
    covariates: tuple = ()
    shares: str | None = None

    @property
    def is_discrete(self):
        return self.family.kind in DISCRETE_KINDS


class Model:
    """A declared model, validated.

    Parameters
    ----------
    graph : networkx.DiGraph
        Nodes carry the contract's attributes; graph attributes may carry
        ``families`` (user family tables), ``model`` (name, description) and
        ``data`` (path, weights).
    source : str
        Where the declaration came from, named in every error message.
    base_dir : str or None
        Directory that a spec's ``[data] path`` is relative to.
    """

    def __init__(self, graph, source="graph", base_dir=None):
        if not isinstance(graph, nx.DiGraph):
            raise SpecError(f"{source}: expected a networkx.DiGraph, found {type(graph).__name__}")
        self.source = source
        self.base_dir = base_dir
        self.graph = _lag_edges_as_attributes(graph.copy(), source)
        unknown = sorted(set(graph.graph) - set(GRAPH_KEYS))
        if unknown:
            raise SpecError(f"{source}: unknown graph attribute(s) {', '.join(unknown)}; "
                            f"allowed are {', '.join(GRAPH_KEYS)}")
        for key, allowed in (("model", MODEL_KEYS), ("data", DATA_KEYS)):
            table = graph.graph.get(key)
            if table is not None and not isinstance(table, dict):
                raise SpecError(f"{source}: [{key}] must be a table, found {type_name(table)}")
            check_table(table or {}, allowed, key, source)
        info = graph.graph.get("model", {}) or {}
        self.name = str(info.get("name", "model"))
        self.description = str(info.get("description", ""))
        self.data_info = dict(graph.graph.get("data", {}) or {})
        self.fit_options = _fit_options(graph.graph.get("fit"), source)
        self.free_params, self.simplex_groups = self._validate_free_params(graph.graph.get("params") or {})
        self.registry = FamilyRegistry(graph.graph.get("families"), where=source)
        self._check_acyclic()
        order = list(nx.lexicographical_topological_sort(self.graph, key=str))
        self.nodes = {}
        for name in order:
            self.nodes[name] = self._validate_node(name)
        self._check_free_params_used()
        self.sharing = self._validate_shares()
        self.latent = [name for name, node in self.nodes.items() if node.latent]
        self.chain = next((name for name, node in self.nodes.items() if node.chain), None)
        self.observed = [name for name, node in self.nodes.items() if not node.latent]
        if not self.observed:
            raise SpecError(f"{source}: every node is latent; at least one node must be observed")
        check_model_size(self)
        self._compiled = None

    def _check_acyclic(self):
        try:
            cycle = nx.find_cycle(self.graph)
        except nx.NetworkXNoCycle:
            return
        path = " -> ".join(str(edge[0]) for edge in cycle) + f" -> {cycle[0][0]}"
        raise SpecError(f"{self.source}: the graph has a cycle {path}; a model must be a DAG")

    def _where(self, name):
        return f"{self.source}: node '{name}'"

    def _validate_node(self, name):
        attrs = dict(self.graph.nodes[name])
        where = self._where(name)
        if not isinstance(name, str) or not name.isidentifier():
            raise SpecError(f"{self.source}: node name {name!r} must be an identifier")
        family = None
        if isinstance(attrs.get("family"), str):
            family = self.registry.get(attrs["family"], where)
        # A family's declared constants are node attributes too (binomial's trials, a user family's own).
        allowed = NODE_KEYS + tuple(c for c in (family.constants if family else ()) if c not in NODE_KEYS)
        for key in attrs:
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else f"; allowed are {', '.join(allowed)}"
                raise SpecError(f"{where}: unknown attribute '{key}'{hint}")
        if "family" not in attrs:
            raise SpecError(f"{where}: missing 'family'")
        if family is None:
            raise SpecError(f"{where}: 'family' must be a family's name (a string), found "
                            f"{type_name(attrs['family'])}")
        latent = attrs.get("latent", False)
        if not isinstance(latent, bool):
            raise SpecError(f"{where}: 'latent' must be true or false, found {latent!r}")
        if latent and family.kind == "table":
            raise SpecError(f"{where}: a deterministic node is observed (its parent is the latent one)")
        if latent and family.kind != "indicator":
            raise SpecError(f"{where}: latent nodes must be categorical (discrete); "
                            f"'{family.name}' is not. Declare the node categorical with k values")
        k = self._validate_k(attrs, family, where)
        parents, covariates = self._validate_parents(name, attrs, where)
        columns, dim = self._validate_columns(attrs, family, latent, where)
        self._validate_covariates(name, family, latent, covariates, dim, where)
        covariance = self._validate_covariance(attrs, family, dim, where)
        constants = self._validate_constants(attrs, family, where)
        prior = self._validate_prior(attrs, family, k, parents, where)
        probs = self._validate_probs(attrs, family, k, parents, prior, where)
        table = self._validate_table(attrs, family, parents, where)
        if table is not None:
            k = attrs.get("k", max(table) + 1)
            if isinstance(k, bool) or not isinstance(k, int) or k <= max(table):
                raise SpecError(f"{where}: 'k' = {k!r} is too small for the table's values 0..{max(table)}")
        chain = self._validate_lagged(name, attrs, family, latent, parents, probs, where)
        return Node(name=name, family=family, latent=latent, k=k, parents=parents, columns=columns,
                    dim=dim, covariance=covariance, constants=constants, prior=prior, probs=probs,
                    table=table, chain=chain, covariates=covariates, shares=attrs.get("shares"))

    def _validate_shares(self):
        """``shares = "OTHER"``: {node: the node whose parameters it uses}, checked to be alike."""
        sharing = {}
        for name, node in self.nodes.items():
            if node.shares is None:
                continue
            where = self._where(name)
            owner = node.shares
            if not isinstance(owner, str) or owner not in self.nodes or owner == name:
                raise SpecError(f"{where}: 'shares' must name another node of the model, found {owner!r}")
            other = self.nodes[owner]
            if other.shares is not None:
                raise SpecError(f"{where}: '{owner}' itself shares the parameters of '{other.shares}'; "
                                f"write shares = \"{other.shares}\"")
            if node.latent or other.latent or node.chain or other.chain:
                raise SpecError(f"{where}: only observed nodes share parameters ('{owner}' and '{name}' must both "
                                "be observed)")
            parent_sizes = [tuple(self.nodes[p].k for p in n.parents) for n in (node, other)]
            alike = (node.family.name == other.family.name and parent_sizes[0] == parent_sizes[1]
                     and node.dim == other.dim and node.covariance == other.covariance and node.k == other.k
                     and node.constants == other.constants and _same_prior(node.prior, other.prior)
                     and node.table == other.table)
            if not alike:
                raise SpecError(f"{where}: shares the parameters of '{owner}', so it must be declared alike: the "
                                "same family, k, dim, covariance, constants and prior, and discrete parents of "
                                f"the same sizes (here {parent_sizes[0]} and {parent_sizes[1]})")
            if node.covariates or other.covariates or node.probs is not None or other.probs is not None:
                raise SpecError(f"{where}: nodes with continuous parents or 'probs' expressions do not share "
                                "parameters")
            sharing[name] = owner
        return sharing

    def _validate_lagged(self, name, attrs, family, latent, parents, probs, where):
        """Whether the node is a chain (``lagged = [itself]``); other lags are refused."""
        lagged = attrs.get("lagged")
        if lagged is None:
            return False
        if not isinstance(lagged, (list, tuple)) or not all(isinstance(n, str) for n in lagged):
            raise SpecError(f"{where}: 'lagged' must be a list of node names whose previous value is a parent")
        if not lagged:
            return False
        others = [n for n in lagged if n != name]
        if others:
            raise SpecError(f"{where}: a lag edge from '{others[0]}' to another node is not supported yet; "
                            "a chain is a latent categorical node lagged on itself (lagged = "
                            f"[\"{name}\"])")
        if not (latent and family.kind == "indicator"):
            raise SpecError(f"{where}: only a latent categorical node can be a chain (lagged on itself)")
        if parents or probs is not None:
            raise SpecError(f"{where}: a chain node takes no other parents and no 'probs' expressions (its "
                            "parameters are 'start' and 'probs', estimated)")
        if len(self.chains_declared()) > 1:
            raise SpecError(f"{self.source}: more than one chain ({', '.join(self.chains_declared())}) is not "
                            "supported yet; declare one latent node lagged on itself")
        return True

    def in_shared_set(self, name):
        """Whether the node shares its parameters with another (either side of ``shares``)."""
        return name in self.sharing or name in self.sharing.values()

    def chains_declared(self):
        """Names of the nodes lagged on themselves."""
        return [n for n, a in self.graph.nodes(data=True) if n in (a.get("lagged") or ())]

    def _validate_k(self, attrs, family, where):
        if family.kind == "table":
            return None
        if family.kind != "indicator":
            if "k" in attrs:
                raise SpecError(f"{where}: 'k' applies to categorical nodes only, not '{family.name}'")
            return None
        if "k" not in attrs:
            raise SpecError(f"{where}: categorical node needs 'k', its number of categories")
        k = attrs["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise SpecError(f"{where}: 'k' must be an integer >= 2, found {k!r}")
        return k

    def _validate_parents(self, name, attrs, where):
        predecessors = list(self.graph.predecessors(name))
        declared = attrs.get("parents")
        if declared is None:
            parents = predecessors
        else:
            if not isinstance(declared, (list, tuple)) or not all(isinstance(p, str) for p in declared):
                raise SpecError(f"{where}: 'parents' must be a list of node names")
            if len(set(declared)) != len(declared):
                raise SpecError(f"{where}: 'parents' lists a node twice")
            missing = [p for p in declared if p not in self.graph]
            if missing:
                raise SpecError(f"{where}: parent '{missing[0]}' is not a node of the model")
            if set(declared) != set(predecessors):
                raise SpecError(f"{where}: 'parents' {declared} does not match the graph's edges "
                                f"into the node {predecessors}")
            parents = list(declared)
        discrete, continuous = [], []
        for parent in parents:
            parent_family = self.registry.get(self.graph.nodes[parent].get("family"), self._where(parent))
            (discrete if parent_family.kind in DISCRETE_KINDS else continuous).append(parent)
        return tuple(discrete), tuple(continuous)

    def _validate_covariates(self, name, family, latent, covariates, dim, where):
        """Continuous parents are covariates of a scalar child with a linear parameter; a covariate has none."""
        if family.kind == "covariate":
            if any(True for _ in self.graph.predecessors(name)):
                raise SpecError(f"{where}: a covariate has no parents (it has no distribution to condition)")
            if not any(True for _ in self.graph.successors(name)):
                raise SpecError(f"{where}: covariate '{name}' is no node's parent; make it a parent of the node "
                                "it explains (parents = [..., \"{name}\"]) or remove it")
        if not covariates:
            return
        first = covariates[0]
        parent_family = self.registry.get(self.graph.nodes[first].get("family"), self._where(first))
        if family.kind != "scalar" or family.linear is None:
            supported = ", ".join(n for n, f in self.registry.families.items() if f.linear)
            raise SpecError(f"{where}: parent '{first}' is a real-valued ('{parent_family.name}') node, and "
                            f"'{family.name}' has no linear parameter for it to enter; continuous parents are "
                            f"supported for {supported} and user families declaring 'linear'; a discrete "
                            "parent must be categorical")
        if dim != 1:
            raise SpecError(f"{where}: continuous parents need a scalar child (one column); '{name}' has "
                            f"dim = {dim}. Declare one node per column")
        for parent in covariates:
            if self.graph.nodes[parent].get("latent"):
                raise SpecError(f"{where}: parent '{parent}' is latent and continuous; continuous parents must "
                                "be observed columns")

    def _validate_columns(self, attrs, family, latent, where):
        columns = attrs.get("columns")
        dim = attrs.get("dim")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise SpecError(f"{where}: 'dim' must be a positive integer, found {dim!r}")
        if columns is not None:
            if isinstance(columns, str) or not isinstance(columns, (list, tuple)) or not columns or \
                    not all(isinstance(c, str) for c in columns):
                raise SpecError(f"{where}: 'columns' must be a non-empty list of column names")
            if len(set(columns)) != len(columns):
                raise SpecError(f"{where}: 'columns' names a column twice")
            if dim is not None and dim != len(columns):
                raise SpecError(f"{where}: 'dim' is {dim} but 'columns' lists {len(columns)} columns")
            dim = len(columns)
            columns = tuple(columns)
        if (dim or 1) > 1 and (latent or family.kind in DISCRETE_KINDS):
            raise SpecError(f"{where}: a categorical node is one column; declare one node per column")
        return columns, dim or 1

    def _validate_covariance(self, attrs, family, dim, where):
        covariance = attrs.get("covariance")
        if not family.covariance:
            if covariance is not None:
                raise SpecError(f"{where}: 'covariance' applies to normal nodes only")
            return None
        if dim == 1:
            if covariance not in (None, "full", "diag", "spherical"):
                raise SpecError(f"{where}: 'covariance' = {covariance!r} needs dim > 1")
            return None
        covariance = "full" if covariance is None else covariance
        if covariance not in COVARIANCE_TYPES:
            raise SpecError(f"{where}: 'covariance' must be one of {', '.join(COVARIANCE_TYPES)}, "
                            f"found {covariance!r}")
        return covariance

    def _validate_constants(self, attrs, family, where):
        values = []
        for constant in family.constants:
            if constant not in attrs:
                raise SpecError(f"{where}: a {family.name} node needs '{constant}'")
            value = attrs[constant]
            if constant == family.upper_bound:
                # A bound of the support (binomial trials): the derivation's checks sum over it.
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONSTANT:
                    raise SpecError(f"{where}: '{constant}' must be an integer from 1 to {MAX_CONSTANT:,}, "
                                    f"found {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 < value <= MAX_CONSTANT:
                raise SpecError(f"{where}: constant '{constant}' of '{family.name}' must be a number above 0 and at "
                                f"most {MAX_CONSTANT:,}, found {value!r}")
            values.append((constant, value))
        for key in ("trials",):
            if key in attrs and key not in family.constants:
                raise SpecError(f"{where}: '{key}' does not apply to a {family.name} node")
        return tuple(values)

    def _validate_prior(self, attrs, family, k, parents, where):
        if "prior" not in attrs:
            return None
        declared = attrs["prior"]
        if not isinstance(declared, dict) or len(declared) != 1:
            raise SpecError(f"{where}: 'prior' must be a table with one entry, e.g. "
                            "prior = { dirichlet = 2 }")
        (name, value), = declared.items()
        if name == "logpdf":
            return self._validate_log_prior(value, family, where)
        if name not in PRIOR_TABLE:
            raise SpecError(f"{where}: unknown prior '{name}'; known priors: {', '.join(PRIOR_TABLE)}, or "
                            "{ logpdf = \"...\" } in the node's parameter names")
        entry = PRIOR_TABLE[name]
        if family.kind != entry["applies_to"]:
            raise SpecError(f"{where}: a {name} prior applies to categorical nodes, not '{family.name}'")
        try:
            array = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise SpecError(f"{where}: the {name} prior must be a number or a list of numbers") from None
        sizes = tuple(self.graph.nodes[p].get("k") for p in parents)
        allowed = [(), (k,), sizes + (k,)]
        if array.shape not in allowed:
            raise SpecError(f"{where}: the {name} prior has shape {array.shape}; give a number, a list of "
                            f"{k} (one per category), or shape {sizes + (k,)} (one row per parent value)")
        if np.any(array > entry["maximum"]):
            raise SpecError(f"{where}: {name} = {value!r}: every value must be at most {entry['maximum']:g}; "
                            "beyond it the prior all but fixes the probabilities, and its log-density is too large "
                            "for float64 to carry the likelihood's digits beside it")
        if not np.all(np.isfinite(array)) or np.any(array < entry["minimum"]):
            raise SpecError(f"{where}: {name} = {value!r}: every value must be >= {entry['minimum']:g}; "
                            f"below it the MAP estimate is undefined when a category's expected count is 0 "
                            f"(the update n + a - 1 would be negative). a = 1 is maximum likelihood")
        return name, array

    def _validate_log_prior(self, text, family, where):
        """A declared log prior density, in the node's own parameter names: ("logpdf", text)."""
        if family.kind != "scalar":
            raise SpecError(f"{where}: prior = {{ logpdf = ... }} applies to scalar families (normal, poisson, "
                            f"a user family, ...), not '{family.name}'; a categorical node takes "
                            "prior = { dirichlet = a }")
        if not isinstance(text, str):
            raise SpecError(f"{where}: the prior's logpdf must be an expression string in "
                            f"{', '.join(family.param_names)}, found {type_name(text)}")
        import sympy
        from .expressions import parse_expression
        parse_expression(text, {n: sympy.Symbol(n) for n in family.param_names}, f"{where}: prior logpdf")
        return "logpdf", text

    def _validate_free_params(self, declared):
        where = f"{self.source}: [params]"
        if not isinstance(declared, dict):
            raise SpecError(f"{where} must be a table of name = {{ domain = ... }}")
        domains, groups = {}, {}
        for name, entry in declared.items():
            if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or name == "x" \
                    or name in RESERVED_NAMES:
                raise SpecError(f"{where}: {name!r} cannot name a parameter (it must be an identifier other than "
                                "x and the functions and constants of expressions)")
            if name in self.graph:
                raise SpecError(f"{where}: '{name}' is also a node; give the parameter another name")
            if not isinstance(entry, dict) or set(entry) - {"domain", "simplex"} or not entry:
                raise SpecError(f"{where}: '{name}' must be {{ domain = \"unit\" }} (real, positive or unit) "
                                "or { simplex = \"GROUP\" }")
            if "simplex" in entry:
                group = entry["simplex"]
                if "domain" in entry or not isinstance(group, str):
                    raise SpecError(f"{where}: '{name}': give either a domain or simplex = \"GROUP\"")
                domains[name] = "simplex"
                groups.setdefault(group, []).append(name)
            else:
                if entry["domain"] not in PARAM_DOMAINS:
                    raise SpecError(f"{where}: '{name}' has domain {entry['domain']!r}; use one of "
                                    f"{', '.join(PARAM_DOMAINS)}, or simplex = \"GROUP\"")
                domains[name] = entry["domain"]
        for group, members in groups.items():
            if len(members) < 2:
                raise SpecError(f"{where}: simplex group '{group}' has only {members[0]}; a simplex needs "
                                "two or more parameters that sum to 1")
        return domains, {g: tuple(m) for g, m in groups.items()}

    def free_symbols(self):
        """The free parameters as sympy symbols, with their domains' assumptions."""
        import sympy
        return {name: sympy.Symbol(name, positive=domain != "real", real=True)
                for name, domain in self.free_params.items()}

    def _validate_probs(self, attrs, family, k, parents, prior, where):
        if "probs" not in attrs:
            return None
        if family.kind != "indicator":
            raise SpecError(f"{where}: 'probs' applies to categorical nodes")
        if parents:
            raise SpecError(f"{where}: 'probs' expressions need a node without parents; remove 'parents' or "
                            "'probs'")
        if prior is not None:
            raise SpecError(f"{where}: a node with 'probs' expressions takes no prior")
        texts = attrs["probs"]
        if not isinstance(texts, (list, tuple)) or len(texts) != k:
            raise SpecError(f"{where}: 'probs' must be a list of {k} expressions, one per category")
        symbols = self.free_symbols()
        from .expressions import parse_expression
        expressions = tuple(parse_expression(t, symbols, f"{where}: probs[{j}]") for j, t in enumerate(texts))
        self._check_sums_to_one(expressions, symbols, where)
        return expressions

    def _check_sums_to_one(self, expressions, symbols, where):
        import sympy
        eliminated = {symbols[m[-1]]: 1 - sum(symbols[n] for n in m[:-1]) for m in self.simplex_groups.values()}
        total = sympy.expand(sum(expressions).subs(eliminated))
        if total == 1:
            return
        total = sympy.simplify(total)
        if total == 1:
            return
        # A rational identity that simplify cannot show is still decided by evaluation at random points.
        rng = np.random.default_rng(0)
        for _ in range(5):
            point = {}
            for name, symbol in symbols.items():
                domain = self.free_params[name]
                point[symbol] = rng.uniform(-2, 2) if domain == "real" else rng.uniform(0.05, 0.3) \
                    if domain == "simplex" else rng.uniform(0.05, 0.95)
            value = complex(total.subs(point).evalf())
            if abs(value - 1) > 1e-12:
                raise SpecError(f"{where}: 'probs' do not sum to 1: their sum is {total}")

    def _validate_table(self, attrs, family, parents, where):
        if family.kind != "table":
            if "table" in attrs:
                raise SpecError(f"{where}: 'table' applies to deterministic nodes")
            return None
        if len(parents) != 1:
            raise SpecError(f"{where}: a deterministic node has exactly one parent, found {len(parents)}")
        table = attrs.get("table")
        parent_k = self.nodes[parents[0]].k
        if not isinstance(table, (list, tuple)) or not table or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in table):
            raise SpecError(f"{where}: 'table' must list, for each category of '{parents[0]}', "
                            "this node's category (an integer >= 0)")
        if len(table) != parent_k:
            raise SpecError(f"{where}: 'table' has {len(table)} entries; parent '{parents[0]}' has "
                            f"{parent_k} categories")
        return tuple(table)

    def _check_free_params_used(self):
        used = set()
        for node in self.nodes.values():
            if node.probs:
                for expression in node.probs:
                    used |= {s.name for s in expression.free_symbols}
        unused = [name for name in self.free_params if name not in used]
        if unused:
            raise SpecError(f"{self.source}: [params] declares {', '.join(unused)} but no node's probs "
                            "use it")

    # -- what later stages use ------------------------------------------------------------

    def __getstate__(self):
        """Pickle the declaration; the compiled form (numpy callables) is rebuilt on first use."""
        state = dict(self.__dict__)
        state["_compiled"] = None
        state.pop("_with_latent", None)
        return state

    def with_latent(self, names):
        """This model with the named observed categorical nodes latent (same parameters, same shapes).

        For data missing some values of a node that is a parent: on those rows the node is
        summed over, so the fit treats it as latent with its present values as labels.
        """
        names = tuple(sorted(names))
        if not hasattr(self, "_with_latent"):
            self._with_latent = {}
        if names not in self._with_latent:
            graph = self.graph.copy()
            for name in names:
                graph.nodes[name]["latent"] = True
            self._with_latent[names] = Model(graph, source=self.source, base_dir=self.base_dir)
        return self._with_latent[names]

    @property
    def compiled(self):
        """The compiled model (derivations turned into numpy callables), built once."""
        if self._compiled is None:
            from .compiled import CompiledModel
            with _memory_as_size_error(self, "compiling"):
                self._compiled = CompiledModel(self)
        return self._compiled

    def fit(self, data, weights=None, init=None, max_iter=None, tol=None, seed=0, restarts=None,
            reg_covar=None, hard=False, progress=None, accelerate=None, memory_budget=None, lengths=None,
            method="batch", batch_size=None, step=None, threads=None, dtype=None):
        """Fit the model by EM.

        Parameters
        ----------
        data : mapping of str to array-like, or pandas.DataFrame
            One entry per observed column, each of length n_rows.
        weights : array-like of shape (n_rows,) or str, optional
            Non-negative row weights (counts), or the name of a data column holding them.
            Default: the spec's ``[data] weights`` column if it names one, else all ones.
        init : mapping or Fit, optional
            ``{node: {param: array}}``; may name only some parameters. A fit starts from its
            parameters (a warm start).
        max_iter : int
            Number of EM iterations at most. This and ``tol``, ``restarts``, ``reg_covar`` and
            ``accelerate`` default to the spec's ``[fit]`` table, else 1000, 1e-8, 1, 1e-6 and None.
        tol : float
            Stop when the objective's relative change falls below ``tol``; 0 never stops early.
        seed : None, int or numpy.random.Generator
            Seeds the initialisation; equal inputs and integer seed give equal fits. None draws
            fresh entropy; a Generator gives one draw (as scikit-learn's ``random_state``).
        restarts : int
            Independent initialisations; the fit with the highest objective is kept.
        reg_covar : float
            Added to the diagonal of every normal node's covariance (or variance) in the M-step.
        hard : bool
            Classification EM: each row takes its most probable latent configuration.
        progress : callable, optional
            Called as ``progress(iteration, objective, change)`` after each iteration (``change``:
            the objective's rise in that iteration). If it also has methods ``restart(index,
            restarts)`` and ``chosen(index, objective)``, they are called as each restart begins
            and with the restart whose fit is kept.
        accelerate : {None, "squarem", "none"}
            None takes the spec's ``[fit] accelerate`` (plain EM without one); ``"none"`` is plain
            EM whatever the spec says; ``"squarem"`` extrapolates the EM map (Varadhan & Roland 2008) with a safeguard
            that never reports an objective below the plain EM step's; ``n_iter`` then
            counts EM steps and ``history`` the objective after each accepted cycle.
        memory_budget : int, optional
            Bytes the sufficient statistics T(X) may take; above it they are formed chunk by
            chunk in every E-step instead of once (same result, more time). Default: half of
            the memory available when the fit starts.
        lengths : sequence of int, optional
            For a model with a chain: rows per sequence, in order (as hmmlearn); default the
            spec's ``[data] sequence`` column, else one sequence.
        method : {"batch", "online"}
            ``"online"``: stepwise EM (``declarem.online``), an M-step after each batch of
            rows with the statistics blended by a decaying step; ``max_iter`` and ``n_iter``
            then count epochs (passes over the data) and ``history`` holds the objective after
            each. For data too large for many full passes; batch EM is exact and, on data
            that fit in memory, usually as fast.
        batch_size : int, optional
            Online EM's rows per batch in memory (default 1024); dask data's batches are its
            partitions.
        step : float, optional
            Online EM's step-size decay exponent, in (0.5, 1] (default 0.6): the t-th
            batch's statistics (t = 1, 2, ...) enter with weight ``(t + 1) ** -step``.
        threads : int, optional
            Threads the E-step runs its chunks of rows on, each with one BLAS thread
            (``declarem.threads``); default ``$DECLAREM_THREADS``, else the cores this process
            may use. The result does not depend on it. Without threadpoolctl installed
            (``declarem[threads]``), chunks run in turn.
        dtype : {None, "float64", "float32"}
            Of the stored sufficient statistics T(X) and the products that read them.
            ``"float32"`` halves their memory and the products' time (a full-covariance
            GMM's iteration about a quarter faster); sums over chunks, the objective and the
            M-step stay float64, and the log-likelihood agrees with float64's to about 1e-8
            relative. Default float64.

        Data may also be a dask DataFrame or a mapping of dask arrays (``declarem.distributed``):
        each E-step then runs per partition, where the partition lives.

        Returns
        -------
        Fit
        """
        from .em import fit_model
        with _memory_as_size_error(self, "fitting"):
            return fit_model(self, data, weights=weights, init=init, max_iter=max_iter, tol=tol, seed=seed,
                             restarts=restarts, reg_covar=reg_covar, hard=hard, progress=progress,
                             accelerate=accelerate, memory_budget=memory_budget, lengths=lengths, method=method,
                             batch_size=batch_size, step=step, threads=threads, dtype=dtype)

    def derive(self):
        """The derivation of every factor: expected statistics and M-step, as text and LaTeX."""
        from .report import Derivation
        return Derivation(self)

    def sample(self, n_rows, params, seed=0, lengths=None):
        """Draw rows from the model at given parameters.

        Parameters
        ----------
        n_rows : int
        params : mapping or Fit
            ``{node: {param: array}}`` for every node, or a fit (its parameters).
        seed : None, int or numpy.random.Generator
            None draws fresh entropy; a Generator is used as it is.
        lengths : sequence of int, optional
            For a model with a chain: rows per sequence (default one sequence).

        Returns
        -------
        dict of str to ndarray
            One column per data column, latent nodes included.
        """
        from .sampling import sample_rows
        if isinstance(n_rows, (int, np.integer)) and not isinstance(n_rows, bool) and n_rows > 0:
            check_sample_size(self, int(n_rows))
        return sample_rows(self, n_rows, params, seed, lengths)

    def to_spec(self):
        """The declaration as a plain dict (the TOML spec's structure), for saving with a fit."""
        nodes = {}
        for name in self.nodes:
            attrs = dict(self.graph.nodes[name])
            node = self.nodes[name]
            declared = set(node.parents + node.covariates)
            attrs.setdefault("parents", [p for p in self.graph.predecessors(name) if p in declared])
            attrs["parents"] = list(attrs["parents"])
            if "columns" in attrs:
                attrs["columns"] = list(attrs["columns"])
            nodes[name] = attrs
        spec = {"model": {"name": self.name, "description": self.description}, "nodes": nodes}
        if self.free_params:
            spec["params"] = {name: dict(entry) for name, entry in self.graph.graph["params"].items()}
        if self.graph.graph.get("families"):
            spec["families"] = {name: dict(table) for name, table in self.graph.graph["families"].items()}
        if self.fit_options:
            spec["fit"] = dict(self.fit_options)
        return spec

    def _repr_html_(self):
        from .notebook import model_html
        return model_html(self)

    def __repr__(self):
        return f"Model({self.name!r}, nodes={list(self.nodes)}, latent={self.latent})"


def _fit_options(table, source):
    """A spec's [fit] table checked: the model's own defaults for the fit options it names."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise SpecError(f"{source}: [fit] must be a table, found {type_name(table)}")
    options = {}
    for key, value in table.items():
        if key not in FIT_DEFAULTS:
            raise SpecError(f"{source}: [fit] has unknown key '{key}'; {did_you_mean(key, list(FIT_DEFAULTS))}")
        if key == "accelerate":
            good = value in ("none", "squarem")
        elif key in ("max_iter", "restarts"):
            good = isinstance(value, int) and not isinstance(value, bool) and value >= (1 if key == "restarts" else 0)
        else:
            good = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and value >= 0
        if not good:
            wanted = {"accelerate": '"squarem" or "none"', "max_iter": "an integer >= 0",
                      "restarts": "an integer >= 1"}.get(key, "a finite number >= 0")
            raise SpecError(f"{source}: [fit] {key} must be {wanted}, found {value!r}")
        options[key] = value
    return options


def _same_prior(first, second):
    """Whether two nodes declare the same prior (a Dirichlet's concentrations compared by value)."""
    if first is None or second is None:
        return first is second
    return first[0] == second[0] and np.array_equal(np.asarray(first[1]), np.asarray(second[1])) \
        if first[0] != "logpdf" else first == second
