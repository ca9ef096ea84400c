"""The MedLVR knowledge graph: curated concepts (concepts.yaml) plus the SLAKE KG import."""

from medlvr.corpus.kg.graph import KGError, KnowledgeGraph, load_graph

__all__ = ["KGError", "KnowledgeGraph", "load_graph"]
