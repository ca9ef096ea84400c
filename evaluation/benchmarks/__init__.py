"""Benchmark loaders: each reads one benchmark from a local directory in the form it is distributed and yields
`evaluation.benchmarks.base.Sample`s. Register a loader with `base.register(name, fn)`."""
