"""Benchmark loaders: each reads one benchmark from a local directory in the form it is distributed and yields
`medlvr.corpus.evalsets.base.Sample`s. Register a loader with `base.register(name, fn)`."""
