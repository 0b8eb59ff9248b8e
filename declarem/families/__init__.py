"""Family declarations as data: the built-ins and the user's, in one registry."""

import difflib

from ..errors import FamilyError
from ..expressions import RESERVED_NAMES, parse_expression
from .builtin import INTERNAL, builtin_families
from .family import DOMAINS, NODE_KEYS, SUPPORTS, CovarianceForm, Family

__all__ = ["Family", "CovarianceForm", "FamilyRegistry", "family_from_table", "SUPPORTS", "DOMAINS"]

USER_KEYS = ("logpdf", "support", "params", "constants", "linear", "description")
USER_SUPPORTS = tuple(s for s in SUPPORTS if s != "category")



def family_from_table(name, table, where):
    """Build a user family from a ``[families.NAME]`` table.

    Parameters
    ----------
    name : str
    table : mapping
        Keys ``logpdf`` (text), ``support`` (one of SUPPORTS) and ``params``
        (mapping of parameter name to domain), optionally ``linear`` (the
        parameter continuous parents set through the canonical link) and
        ``description``.
    where : str
        The file (or graph) the table came from, for error messages.
    """
    if not isinstance(table, dict):
        raise FamilyError(f"{where}: family '{name}' must be a table with logpdf, support and params")
    unknown = sorted(set(table) - set(USER_KEYS))
    if unknown:
        raise FamilyError(f"{where}: family '{name}' has unknown key(s) {', '.join(unknown)}; "
                          f"allowed are {', '.join(USER_KEYS)}")
    for key in ("logpdf", "support", "params"):
        if key not in table:
            raise FamilyError(f"{where}: family '{name}' is missing '{key}'")
    if not isinstance(table["logpdf"], str):
        raise FamilyError(f"{where}: family '{name}': logpdf must be a string expression in x")
    if table["support"] not in USER_SUPPORTS:
        raise FamilyError(f"{where}: family '{name}': support '{table['support']}' is not one of "
                          f"{', '.join(USER_SUPPORTS)} (a categorical variable is the built-in 'categorical')")
    params = table["params"]
    if not isinstance(params, dict) or not params:
        raise FamilyError(f"{where}: family '{name}': params must be a table of name = domain")
    for param, domain in params.items():
        if domain not in DOMAINS:
            raise FamilyError(f"{where}: family '{name}': parameter '{param}' has domain {domain!r}; "
                              f"use one of {', '.join(DOMAINS)}")
        if param == "x" or not param.isidentifier() or param.startswith("_"):
            raise FamilyError(f"{where}: family '{name}': '{param}' cannot name a parameter")
        if param in RESERVED_NAMES:
            raise FamilyError(f"{where}: family '{name}': '{param}' is the name of a function or constant in "
                              "expressions; give the parameter another name")
    constants = table.get("constants", [])
    if not isinstance(constants, list) or not all(isinstance(c, str) for c in constants):
        raise FamilyError(f"{where}: family '{name}': 'constants' must be a list of names, given on each node "
                          "(constants = [\"r\"], then r = 3 on the node)")
    for constant in constants:
        if constant in params or constant == "x" or not constant.isidentifier() or constant.startswith("_") \
                or constant in RESERVED_NAMES or constant in NODE_KEYS:
            raise FamilyError(f"{where}: family '{name}': '{constant}' cannot name a constant (it must be an "
                              "identifier other than x, the parameters, node attributes and the names of "
                              "functions and constants)")
    linear = table.get("linear")
    if linear is not None and linear not in params:
        raise FamilyError(f"{where}: family '{name}': 'linear' must name one of its parameters "
                          f"({', '.join(params)}), found {linear!r}")
    # Parse now, so a bad expression is reported when the spec is read, not at the first fit.
    import sympy
    names = {n: sympy.Symbol(n) for n in ["x", *params, *constants]}
    parse_expression(table["logpdf"], names, f"{where}: family '{name}' logpdf")
    return Family(name=name, kind="scalar", logpdf=table["logpdf"], support=table["support"],
                  params=tuple(params.items()), constants=tuple(constants), linear=linear,
                  description=str(table.get("description", "")))


class FamilyRegistry:
    """The families a model can use: the built-ins plus the model's own declarations.

    A user family may not reuse a built-in name; the registry refuses duplicates.
    """

    def __init__(self, user_tables=None, where="graph"):
        self.families = builtin_families()
        if user_tables is not None and not isinstance(user_tables, dict):
            raise FamilyError(f"{where}: [families] must be a table of NAME = {{ logpdf, support, params }}, "
                              f"found {type(user_tables).__name__}")
        for name, table in (user_tables or {}).items():
            if name in self.families:
                raise FamilyError(f"{where}: family '{name}' is built in; give yours another name")
            self.families[name] = family_from_table(name, table, where)

    def get(self, name, where):
        if not isinstance(name, str):
            raise FamilyError(f"{where}: 'family' must be a family's name (a string), found {name!r}")
        if name in self.families and name not in INTERNAL:
            return self.families[name]
        choices = [n for n in self.families if n not in INTERNAL]
        near = difflib.get_close_matches(str(name), choices, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; known families: {', '.join(sorted(choices))}"
        raise FamilyError(f"{where}: unknown family '{name}'{hint}")

    def internal(self, name):
        return self.families[name]
