"""TOML spec file -> networkx graph -> Model, with the file and node named in every message."""

import os
import tomllib

import networkx as nx

from .errors import SpecError
from .model import Model

TOP_KEYS = ("model", "data", "params", "nodes", "families")


def load_model(path):
    """Read a TOML spec file and return the validated Model.

    Parameters
    ----------
    path : str or os.PathLike
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            spec = tomllib.load(handle)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    return model_from_spec(spec, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def model_from_spec(spec, source="spec", base_dir=None):
    """Build a Model from a spec's parsed tables (as from TOML, or stored with a fit)."""
    return Model(graph_from_spec(spec, source), source=source, base_dir=base_dir)


def graph_from_spec(spec, source="spec"):
    """Turn a spec's tables into a networkx DiGraph with the contract's attributes."""
    if not isinstance(spec, dict):
        raise SpecError(f"{source}: expected tables at the top level")
    unknown = sorted(set(spec) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"{source}: unknown table(s) [{'], ['.join(unknown)}]; allowed are "
                        f"{', '.join(TOP_KEYS)}")
    nodes = spec.get("nodes")
    if not isinstance(nodes, dict) or not nodes:
        raise SpecError(f"{source}: no [nodes.NAME] tables; declare at least one node")
    graph = nx.DiGraph()
    for key in ("model", "data", "families", "params"):
        if key in spec:
            if not isinstance(spec[key], dict):
                raise SpecError(f"{source}: [{key}] must be a table")
            graph.graph[key] = spec[key]
    for name, attrs in nodes.items():
        if not isinstance(attrs, dict):
            raise SpecError(f"{source}: node '{name}' must be a table [nodes.{name}]")
        graph.add_node(name, **attrs)
    for name, attrs in nodes.items():
        parents = attrs.get("parents", [])
        if not isinstance(parents, list):
            raise SpecError(f"{source}: node '{name}': 'parents' must be a list of node names")
        for parent in parents:
            if parent not in nodes:
                raise SpecError(f"{source}: node '{name}': parent '{parent}' is not declared; "
                                f"add [nodes.{parent}]")
            graph.add_edge(parent, name)
    return graph


def data_path(model):
    """The ``[data] path`` of a spec, resolved relative to the spec file, or None."""
    path = model.data_info.get("path")
    if path is None:
        return None
    if not isinstance(path, str):
        raise SpecError(f"{model.source}: [data] path must be a string")
    return path if os.path.isabs(path) or model.base_dir is None else os.path.join(model.base_dir, path)
