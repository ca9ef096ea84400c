"""Evaluation benchmarks: one module per benchmark reads it from a local directory in the form it is distributed,
yields `medlvr.corpus.evalsets.base.Sample`s, carries a small sample writer for it, and registers all of it with
`medlvr.corpus.evalsets.registry.register_benchmark` (see docs/architecture.md, "Add a benchmark")."""
