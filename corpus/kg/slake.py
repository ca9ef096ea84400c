"""Import of the SLAKE knowledge graph (Awenbocc/mvqa-kg, MIT; see corpus/kg/slake/LICENSE).

Three `#`-separated files with a header line:
  en_disease.csv   disease#attribute#value   (location, symptom, cause, treatment, prevention, alias, ...)
  en_organ.csv     organ#attribute#value     (function, position, definition, component, ...)
  en_organ_rel.csv organ#attribute#value     (`belong to`: organ -> organ system, or organ -> organ)

Each SLAKE disease/organ is linked to a curated concept by name, by its own `alias` values, or by the small
explicit ALIASES table below (case-insensitive; a trailing plural "s" is also tried by the resolver). Linked
entries add their attributes to the curated concept. Unlinked entries become `slake:` nodes (type `disease`,
or `anatomy` for organs) so that facts and entity mentions stay available, and they are counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from medlvr.corpus.package_data import package_path

SLAKE_DIR = package_path("medlvr.corpus", "kg", "slake")

# SLAKE spellings that neither the concept names/synonyms nor SLAKE's own aliases catch.
ALIASES: dict[str, str] = {
    "miocardial infarction": "kg:myocardial_infarction",  # typo in SLAKE
    "bronchiectasia": "kg:bronchiectasis",
    "liver tumors": "kg:liver_tumor",
}
# SLAKE names that are ordinary words in imaging text with another meaning ("fissure" of the lung, not the
# "crack fracture" SLAKE means): imported, but not registered as entity terms.
NOT_TERMS = {"fissure"}
# Order in which attributes are rendered as facts; other attributes follow in file order.
FACT_ORDER = ("location", "position", "definition", "description", "function", "component", "symptom", "cause",
              "treatment", "prevention", "infectivity", "susceptible population")


@dataclass
class SlakeData:
    diseases: dict[str, dict[str, list[str]]]  # disease name -> attribute -> distinct values (file order)
    organs: dict[str, dict[str, list[str]]]  # organ name -> attribute -> values
    belongs: list[tuple[str, str]]  # (organ, organ system or parent organ), from en_organ_rel.csv


@dataclass
class SlakeCounts:
    diseases_linked: int = 0
    diseases_unlinked: int = 0
    organs_linked: int = 0
    organs_unlinked: int = 0
    belongs_edges: int = 0
    unlinked_diseases: list[str] = field(default_factory=list)
    unlinked_organs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"diseases_linked": self.diseases_linked, "diseases_unlinked": self.diseases_unlinked,
                "organs_linked": self.organs_linked, "organs_unlinked": self.organs_unlinked,
                "belongs_edges": self.belongs_edges}


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    """Rows of a `#`-separated SLAKE file, header skipped. The value may itself contain '#'."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        parts = line.split("#", 2)
        if len(parts) != 3:
            raise ValueError(f"{path.name}:{i + 1}: expected subject#attribute#value, got {line!r}")
        subj, attr, value = (p.strip() for p in parts)
        if i == 0 and subj in ("disease", "organ") and attr == "attribute":
            continue
        rows.append((subj, attr.lower(), value))
    return rows


def _group(rows: list[tuple[str, str, str]]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for subj, attr, value in rows:
        vals = out.setdefault(subj, {}).setdefault(attr, [])
        if value and value not in vals:
            vals.append(value)
    return out


def load_slake(directory: Path | str | None = None) -> SlakeData:
    d = Path(directory) if directory else SLAKE_DIR
    belongs = [(s, v) for s, a, v in read_triples(d / "en_organ_rel.csv") if a == "belong to"]
    return SlakeData(diseases=_group(read_triples(d / "en_disease.csv")),
                     organs=_group(read_triples(d / "en_organ.csv")), belongs=belongs)


def slug(name: str) -> str:
    return "slake:" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _split_aliases(values: list[str]) -> list[str]:
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip().removesuffix("etc.").strip()
            if len(part) > 2 and part not in out:
                out.append(part)
    return out


def link(name: str, aliases: list[str], resolve: Callable[[str], str | None]) -> str | None:
    """The curated concept id for a SLAKE entry, or None."""
    cid = resolve(name)
    if cid is None:
        cid = ALIASES.get(name.lower())
    for alias in aliases:
        if cid is None:
            cid = resolve(alias)
    return cid


def attach(g: nx.MultiDiGraph, data: SlakeData, resolve: Callable[[str], str | None],
           add_term: Callable[[str, str], None]) -> SlakeCounts:
    """Add SLAKE attributes and edges to the graph `g` (in place). `resolve` maps text to a node id (curated or
    an already added slake node); `add_term` registers a name of a new slake node for later resolution."""
    counts = SlakeCounts()

    def node_for(name: str, kind: str, aliases: list[str]) -> tuple[str, bool]:
        """(node id, linked to a curated concept?)"""
        cid = link(name, aliases, resolve)
        if cid is not None and cid.startswith("kg:"):
            return cid, True
        cid = cid or slug(name)
        if cid not in g:
            g.add_node(cid, type=kind, name=name, synonyms=[], origin="slake", attributes={}, xrefs={})
            for term in [name, *aliases]:
                if term.lower() not in NOT_TERMS:
                    add_term(term, cid)
        return cid, False

    # organs first, so that disease locations can point at them
    organ_names = list(data.organs) + [n for pair in data.belongs for n in pair if n not in data.organs]
    organ_ids: dict[str, str] = {}
    for name in dict.fromkeys(organ_names):
        attrs = data.organs.get(name, {})
        cid, linked = node_for(name, "anatomy", _split_aliases(attrs.get("alias", [])))
        organ_ids[name] = cid
        _merge_attrs(g.nodes[cid], attrs, name)
        if linked:
            counts.organs_linked += 1
        else:
            counts.organs_unlinked += 1
            counts.unlinked_organs.append(name)
    for organ, target in data.belongs:
        src, dst = organ_ids[organ], organ_ids[target]
        rel = "belongs_to_system" if g.nodes[dst].get("type") == "organ_system" else "part_of"
        if src != dst and not g.has_edge(src, dst, key=rel):
            g.add_edge(src, dst, key=rel, relation=rel, source="slake")
            counts.belongs_edges += 1

    for name, attrs in data.diseases.items():
        if name.lower() == "disease":
            continue
        cid, linked = node_for(name, "disease", _split_aliases(attrs.get("alias", [])))
        _merge_attrs(g.nodes[cid], attrs, name)
        if linked:
            counts.diseases_linked += 1
        else:
            counts.diseases_unlinked += 1
            counts.unlinked_diseases.append(name)
            for loc in attrs.get("location", []):  # located_in edges only for the new slake nodes
                target = resolve(loc)
                if target and target != cid and not g.has_edge(cid, target, key="located_in"):
                    g.add_edge(cid, target, key="located_in", relation="located_in", source="slake")
    return counts


def _merge_attrs(node: dict, attrs: dict[str, list[str]], slake_name: str) -> None:
    store = node.setdefault("attributes", {})
    for attr, values in attrs.items():
        vals = store.setdefault(attr, [])
        vals.extend(v for v in values if v not in vals)
    names = node.setdefault("slake_names", [])
    if slake_name not in names:
        names.append(slake_name)
