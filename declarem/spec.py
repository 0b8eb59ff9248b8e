"""TOML spec file -> networkx graph -> Model, with the file and node named in every message."""

import difflib
import os
import tomllib

import networkx as nx

from .data import decode_text, read_input
from .errors import SpecError
from .model import Model
from .tables import shown, type_name

TOP_KEYS = ("model", "data", "params", "nodes", "families", "fit")


def load_model(path):
    """Read a TOML spec file and return the validated Model.

    Parameters
    ----------
    path : str or os.PathLike

    Raises
    ------
    SpecError
        Naming the file: missing, not a regular file, unreadable, not UTF-8 (with
        the line), not TOML, or declaring something invalid.
    """
    path = os.fspath(path)
    text = decode_text(read_input(path, "spec file", SpecError), path, "spec file", SpecError)
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise SpecError(f"{path}: not valid TOML: arrays or inline tables nested too deeply") from None
    return model_from_spec(spec, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def model_from_spec(spec, source="spec", base_dir=None):
    """Build a Model from a spec's parsed tables (as from TOML, or stored with a fit)."""
    return Model(graph_from_spec(spec, source), source=source, base_dir=base_dir)


def graph_from_spec(spec, source="spec"):
    """Turn a spec's tables into a networkx DiGraph with the contract's attributes.

    Parameters
    ----------
    spec : dict
        The parsed tables: from TOML, or the ``model`` entry of a stored fit (JSON).
    source : str
        Where the spec came from, named in every message.

    Returns
    -------
    networkx.DiGraph
    """
    if not isinstance(spec, dict):
        raise SpecError(f"{source}: expected tables at the top level, found {type_name(spec)}")
    for key in spec:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            hint = f"did you mean [{close[0]}]?" if close else f"the tables are [{'], ['.join(TOP_KEYS)}]"
            raise SpecError(f"{source}: unknown table [{key}]; {hint}")
    for key in ("model", "data", "families", "params", "nodes", "fit"):
        if key in spec and not isinstance(spec[key], dict):
            raise SpecError(f"{source}: [{key}] must be a table, found {type_name(spec[key])}")
    nodes = spec.get("nodes")
    if not nodes:
        raise SpecError(f"{source}: no [nodes.NAME] tables; declare at least one node")
    graph = nx.DiGraph()
    for key in ("model", "data", "families", "params", "fit"):
        if key in spec:
            graph.graph[key] = spec[key]
    for name, attrs in nodes.items():
        if not isinstance(attrs, dict):
            raise SpecError(f"{source}: node '{name}' must be a table [nodes.{name}], found {type_name(attrs)}")
        graph.add_node(name, **attrs)
    for name, attrs in nodes.items():
        parents = attrs.get("parents", [])
        if not isinstance(parents, list):
            raise SpecError(f"{source}: node '{name}': 'parents' must be a list of node names")
        for parent in parents:
            if not isinstance(parent, str):
                raise SpecError(f"{source}: node '{name}': 'parents' must be a list of node names, found "
                                f"{type_name(parent)} {shown(parent)}")
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
