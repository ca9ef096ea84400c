"""The MedLVR knowledge graph: corpus/kg/concepts.yaml (curated) + the SLAKE import, as a networkx MultiDiGraph.

Nodes are concept ids (`kg:...` curated, `slake:...` imported and not linked to a curated concept). Every edge
carries `relation` (also its key) and `source` ("curated" or "slake"); `appearance_on` edges carry `text`.
`load_graph()` validates on load and raises KGError with a readable message:
  * ids unique and well formed, types known, every name/synonym maps to exactly one concept;
  * no dangling edge (every relation target is a concept);
  * subclass_of, part_of and component_of are acyclic;
  * every finding (except the root kg:finding) has a subclass_of parent, and every non-generic finding a
    located_in or part_of edge;
  * every label of every catalog dataset maps to a concept, its raw spelling (if it resolves at all) resolves to
    that concept or an ancestor, and every catalog modality resolves to a modality concept.
"""

from __future__ import annotations

import re
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from medlvr.corpus.catalog import CATALOG_DIR
from medlvr.corpus.kg import slake
from medlvr.corpus.package_data import package_path

CONCEPTS_PATH = package_path("medlvr.corpus", "kg", "concepts.yaml")
TYPES = ("finding", "anatomy", "organ", "organ_system", "modality", "mri_sequence", "xray_view", "landmark", "cell")
RELATIONS = ("subclass_of", "located_in", "part_of", "belongs_to_system", "visible_on", "differential_with",
             "component_of")  # plus appearance_on, given as a mapping {modality: text}
ENTITY_TYPES = {"finding", "anatomy", "organ", "organ_system", "landmark", "cell", "disease"}  # for entity_terms()
MIN_ENTITY_TERM = 3  # shorter abbreviations (LV, ET, OD, ...) match ordinary words too often to be entity mentions
_ID_RE = re.compile(r"^kg:[a-z0-9_]+$")
_UP = ("located_in", "part_of", "component_of", "subclass_of")  # walked upwards by organ_of / system_of


class KGError(ValueError):
    pass


def norm(text: str) -> str:
    return " ".join(str(text).replace("_", " ").split()).casefold()


class KnowledgeGraph:
    def __init__(self, g: nx.MultiDiGraph, terms: dict[str, str], catalog: dict[str, dict[str, str]],
                 slake_counts: slake.SlakeCounts | None):
        self.g = g
        self._terms = terms  # normalised term -> node id
        self._catalog = catalog  # dataset id -> {raw label: concept id}
        self.slake_counts = slake_counts
        self._up_cache: dict[tuple[str, str], str | None] = {}  # (id, wanted type) -> organ / system

    # ------------------------------------------------------------------ lookup
    def concept(self, cid: str) -> dict[str, Any]:
        if cid not in self.g:
            raise KeyError(f"unknown concept {cid!r}")
        return {"id": cid, **self.g.nodes[cid]}

    def name(self, cid: str) -> str:
        return self.g.nodes[cid]["name"]

    def kind(self, cid: str) -> str:
        return self.g.nodes[cid]["type"]

    def resolve(self, text: str, dataset: str | None = None) -> str | None:
        """Concept id for a name, synonym, raw dataset label or id; None if unknown. With `dataset`, that
        dataset's catalog mapping wins (it disambiguates generic raw labels such as "Mass" or "Fluid")."""
        if dataset is not None:
            labels = self._catalog.get(dataset, {})
            for key in (text, str(text).strip()):
                if key in labels:
                    return labels[key]
        if text in self.g:
            return text
        t = norm(text)
        if t in self._terms:
            return self._terms[t]
        if t.endswith("s") and t[:-1] in self._terms:
            return self._terms[t[:-1]]
        return None

    def entity_terms(self) -> dict[str, str]:
        """Every name/synonym (lower case) of a medical entity -> id, for finding entity mentions in text."""
        return {t: cid for t, cid in self._terms.items()
                if self.g.nodes[cid]["type"] in ENTITY_TYPES and len(t) >= MIN_ENTITY_TERM}

    def organs(self) -> list[str]:
        return [n for n, d in self.g.nodes(data=True) if d["type"] == "organ"]

    def systems(self) -> list[str]:
        return [n for n, d in self.g.nodes(data=True) if d["type"] == "organ_system"]

    # ------------------------------------------------------------------ relations
    def targets(self, cid: str, relation: str) -> list[str]:
        return [v for _, v, k in self.g.out_edges(cid, keys=True) if k == relation]

    def sources(self, cid: str, relation: str) -> list[str]:
        return [u for u, _, k in self.g.in_edges(cid, keys=True) if k == relation]

    def _closure(self, cid: str, relation: str, up: bool) -> list[str]:
        step = self.targets if up else self.sources
        seen: dict[str, None] = {}
        queue = deque(step(cid, relation))
        while queue:
            n = queue.popleft()
            if n not in seen and n != cid:
                seen[n] = None
                queue.extend(step(n, relation))
        return list(seen)

    def ancestors(self, cid: str) -> list[str]:
        """subclass_of ancestors, nearest first."""
        return self._closure(cid, "subclass_of", up=True)

    def descendants(self, cid: str) -> list[str]:
        return self._closure(cid, "subclass_of", up=False)

    def related(self, cid: str) -> set[str]:
        """Concepts that must never be a distractor for `cid`: itself, its ancestors and descendants, and the
        regions it contains or lies in (component_of, e.g. ET/TC/WT, cup/disc, tumour/kidney)."""
        return ({cid, *self.ancestors(cid), *self.descendants(cid), *self._closure(cid, "component_of", True),
                 *self._closure(cid, "component_of", False)})

    def siblings(self, cid: str) -> list[str]:
        """Concepts of the same type sharing a parent with `cid`, excluding related and generic (category)
        concepts. The parent relation is subclass_of; without one, part_of; for organs, belongs_to_system."""
        for rel in ("subclass_of", "part_of", "belongs_to_system"):
            parents = self.targets(cid, rel)
            if parents:
                break
        else:
            return []
        blocked = self.related(cid)
        out: dict[str, None] = {}
        for p in parents:
            for s in self.sources(p, rel):
                d = self.g.nodes[s]
                if s not in blocked and d["type"] == self.g.nodes[cid]["type"] and not d.get("generic"):
                    out[s] = None
        return list(out)

    def neighbours(self, cid: str) -> list[str]:
        """Every concept linked to `cid` by any relation, in either direction."""
        return list(dict.fromkeys(n for n in [*self.g.successors(cid), *self.g.predecessors(cid)] if n != cid))

    def differentials(self, cid: str) -> list[str]:
        return list(dict.fromkeys(self.targets(cid, "differential_with") + self.sources(cid, "differential_with")))

    def _walk_up(self, cid: str, want: str, relations: tuple[str, ...]) -> str | None:
        """Breadth-first over `relations` (in that priority) to the nearest node of type `want` (memoised)."""
        if (cid, want) in self._up_cache:
            return self._up_cache[cid, want]
        seen, queue, found = {cid}, deque([cid]), None
        while queue and found is None:
            n = queue.popleft()
            if self.g.nodes[n]["type"] == want:
                found = n
                break
            for rel in relations:
                for t in self.targets(n, rel):
                    if t not in seen:
                        seen.add(t)
                        queue.append(t)
        self._up_cache[cid, want] = found
        return found

    def organ_of(self, cid: str) -> str | None:
        return self._walk_up(cid, "organ", _UP)

    def system_of(self, cid: str) -> str | None:
        return self._walk_up(cid, "organ_system", ("belongs_to_system", *_UP))

    def same_location(self, cid: str) -> list[str]:
        """Curated concepts of the same type in the same organ as `cid` (e.g. other liver lesions), excluding
        related and generic concepts."""
        organ, kind = self.organ_of(cid), self.kind(cid)
        if organ is None:
            return []
        blocked = self.related(cid)
        return [n for n, d in self.g.nodes(data=True)
                if d["type"] == kind and d["origin"] == "curated" and not d.get("generic") and n not in blocked
                and self.organ_of(n) == organ]

    def distractors(self, cid: str) -> list[str]:
        """Siblings, then same-location concepts, then curated differentials; never related concepts."""
        blocked = self.related(cid)
        pool = [*self.siblings(cid), *self.same_location(cid), *self.differentials(cid)]
        return [d for d in dict.fromkeys(pool) if d not in blocked]

    def allowed_around(self, cid: str) -> set[str]:
        """What generated text about `cid` may also mention: its ancestors, graph neighbours (any relation), and
        the organ and organ system that `facts()` names (they can be several hops away, e.g. cup -> disc -> eye)."""
        out = {cid, *self.ancestors(cid), *self.neighbours(cid)}
        for c in (self.organ_of(cid), self.system_of(cid)):
            if c:
                out |= {c, *self.ancestors(c)}
        return out

    def modality_concepts(self, modality: str) -> set[str]:
        """Concept ids of a catalog modality name ("CT", "X-ray", ...) and its ancestors."""
        cid = self.resolve(modality)
        return {cid, *self.ancestors(cid)} if cid else set()

    # ------------------------------------------------------------------ text
    def facts(self, cid: str) -> list[str]:
        """Human-readable facts about `cid` for prompts (curated relations first, then SLAKE attributes)."""
        d, name, out = self.g.nodes[cid], self.name(cid), []
        if d.get("definition"):
            out.append(d["definition"])
        if d.get("synonyms"):
            out.append(f"{name} is also called: {', '.join(d['synonyms'][:6])}.")
        for rel, phrase in (("subclass_of", "is a kind of"), ("located_in", "is located in the"),
                            ("part_of", "is part of the"), ("component_of", "lies within the"),
                            ("belongs_to_system", "belongs to the")):
            for t in self.targets(cid, rel):
                out.append(f"{name} {phrase} {self.name(t)}.")
        organ, system = self.organ_of(cid), self.system_of(cid)
        if organ and organ != cid and organ not in self.targets(cid, "located_in"):
            out.append(f"The organ of {name} is the {self.name(organ)}.")
        if system and system not in self.targets(cid, "belongs_to_system"):
            out.append(f"{name} relates to the {self.name(system)}.")
        for _, t, k, e in self.g.out_edges(cid, keys=True, data=True):
            if k == "appearance_on":
                out.append(f"On {self.name(t)}, {name} appears as {e['text']}.")
        vis = self.targets(cid, "visible_on")
        if vis:
            out.append(f"{name} is visible on {', '.join(self.name(v) for v in vis)}.")
        diff = self.differentials(cid)
        if diff:
            out.append(f"{name} is easily confused with {', '.join(self.name(x) for x in diff)}.")
        attrs = d.get("attributes", {})
        order = [a for a in slake.FACT_ORDER if a in attrs] + [a for a in attrs if a not in slake.FACT_ORDER]
        for a in order:
            if a not in ("alias",):
                out.append(f"{a.capitalize()} of {name}: {'; '.join(attrs[a])}.")
        return out

    def stats(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        curated = 0
        for _, d in self.g.nodes(data=True):
            types[d["type"]] = types.get(d["type"], 0) + 1
            curated += d.get("origin") == "curated"
        relations: dict[str, int] = {}
        for _, _, k in self.g.edges(keys=True):
            relations[k] = relations.get(k, 0) + 1
        return {"concepts": curated, "nodes": self.g.number_of_nodes(), "edges": self.g.number_of_edges(),
                "types": types, "relations": relations, "terms": len(self._terms),
                "catalog_labels": sum(len(v) for v in self._catalog.values()),
                "slake": self.slake_counts.as_dict() if self.slake_counts else None}


# ---------------------------------------------------------------------- building and validation
def _as_list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise KGError(f"{where}: expected a list, got {value!r}")
    return value


def build_graph(concepts: list[dict[str, Any]], catalog: dict[str, dict[str, str]] | None = None,
                catalog_modalities: dict[str, str] | None = None,
                slake_data: slake.SlakeData | None = None) -> KnowledgeGraph:
    g = nx.MultiDiGraph()
    terms: dict[str, str] = {}

    def add_term(term: str, cid: str, strict: bool) -> None:
        t = norm(term)
        if not t:
            return
        if t in terms and terms[t] != cid:
            if strict:
                raise KGError(f"term {term!r} names both {terms[t]} and {cid}")
            return
        terms[t] = cid

    for i, c in enumerate(concepts):
        cid = c.get("id")
        if not isinstance(cid, str) or not _ID_RE.match(cid):
            raise KGError(f"concept #{i}: bad id {cid!r} (want kg:lowercase_name)")
        if cid in g:
            raise KGError(f"duplicate concept id {cid}")
        if c.get("type") not in TYPES:
            raise KGError(f"{cid}: type {c.get('type')!r} is not one of {TYPES}")
        if not c.get("name"):
            raise KGError(f"{cid}: missing name")
        unknown = set(c) - {"id", "type", "name", "synonyms", "xrefs", "generic", "definition", "appearance_on",
                            *RELATIONS}
        if unknown:
            raise KGError(f"{cid}: unknown keys {sorted(unknown)}")
        syns = [str(s) for s in _as_list(c.get("synonyms"), cid)]
        g.add_node(cid, type=c["type"], name=str(c["name"]), synonyms=syns, xrefs=dict(c.get("xrefs") or {}),
                   generic=bool(c.get("generic")), definition=c.get("definition"), origin="curated",
                   attributes={})
        for term in [c["name"], *syns]:
            add_term(term, cid, strict=True)

    for c in concepts:
        cid = c["id"]
        for rel in RELATIONS:
            for t in _as_list(c.get(rel), f"{cid}.{rel}"):
                if t not in g:
                    raise KGError(f"dangling edge: {cid} --{rel}--> {t} (no such concept)")
                g.add_edge(cid, t, key=rel, relation=rel, source="curated")
        for t, text in (c.get("appearance_on") or {}).items():
            if t not in g:
                raise KGError(f"dangling edge: {cid} --appearance_on--> {t} (no such concept)")
            g.add_edge(cid, t, key="appearance_on", relation="appearance_on", text=str(text), source="curated")

    kg = KnowledgeGraph(g, terms, dict(catalog or {}), None)
    _validate_structure(kg)
    _validate_catalog(kg, catalog or {}, catalog_modalities or {})
    if slake_data is not None:
        kg.slake_counts = slake.attach(g, slake_data, kg.resolve, lambda t, cid: add_term(t, cid, strict=False))
        _validate_structure(kg)
    kg._up_cache.clear()
    return kg


def _validate_structure(kg: KnowledgeGraph) -> None:
    g = kg.g
    for rel in ("subclass_of", "part_of", "component_of"):
        sub = nx.DiGraph([(u, v) for u, v, k in g.edges(keys=True) if k == rel])
        try:
            cycle = nx.find_cycle(sub)
        except nx.NetworkXNoCycle:
            continue
        raise KGError(f"{rel} has a cycle: {' -> '.join(u for u, _ in cycle)} -> {cycle[0][0]}")
    for n, d in g.nodes(data=True):
        if d["type"] != "finding" or n == "kg:finding":
            continue
        if not kg.targets(n, "subclass_of"):
            raise KGError(f"finding {n} has no subclass_of parent")
        if not d.get("generic") and not (kg.targets(n, "located_in") or kg.targets(n, "part_of")):
            raise KGError(f"finding {n} has no located_in/part_of edge (mark it generic: true if it has none)")


def _validate_catalog(kg: KnowledgeGraph, catalog: dict[str, dict[str, str]], modalities: dict[str, str]) -> None:
    missing = [f"{ds}: {raw!r} -> {cid}" for ds, labels in catalog.items() for raw, cid in labels.items()
               if cid not in kg.g]
    if missing:
        raise KGError("catalog label concepts missing from the knowledge graph:\n  " + "\n  ".join(missing))
    for ds, labels in catalog.items():
        for raw, cid in labels.items():
            got = kg.resolve(raw)
            if got is not None and got != cid and got not in kg.ancestors(cid):
                raise KGError(f"{ds}: raw label {raw!r} maps to {cid} in the catalog but resolves to {got}")
    for ds, mod in modalities.items():
        got = kg.resolve(mod)
        if got is None or kg.kind(got) != "modality":
            raise KGError(f"{ds}: catalog modality {mod!r} does not resolve to a modality concept")


def read_catalog(directory: Path | str | None = None) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """{dataset id: {raw label: concept id}} and {dataset id: modality} from the catalog YAML files (read
    directly, so the graph does not depend on the adapters being importable)."""
    labels, modalities = {}, {}
    for path in sorted(Path(directory or CATALOG_DIR).glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        ds = raw.get("id", path.stem)
        labels[ds] = {str(k).strip(): str(v) for k, v in (raw.get("labels") or {}).items()}
        if raw.get("modality"):
            modalities[ds] = str(raw["modality"])
    return labels, modalities


def load_concepts(path: Path | str | None = None) -> list[dict[str, Any]]:
    p = Path(path or CONCEPTS_PATH)
    raw = yaml.safe_load(p.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("concepts"), list):
        raise KGError(f"{p}: expected a mapping with a 'concepts' list")
    return raw["concepts"]


def build_from_files(concepts_path: Path | str | None = None, catalog_dir: Path | str | None = None,
                     slake_dir: Path | str | None = None, with_slake: bool = True) -> KnowledgeGraph:
    labels, modalities = read_catalog(catalog_dir)
    data = slake.load_slake(slake_dir) if with_slake else None
    return build_graph(load_concepts(concepts_path), labels, modalities, data)


@lru_cache(maxsize=1)
def load_graph() -> KnowledgeGraph:
    """The shipped graph (concepts.yaml + catalog + SLAKE), validated, built once per process."""
    return build_from_files()
