"""The ``picard`` command line — the applications built on the library.

- ``picard demo`` (:mod:`picard.cli.demo`): the shipped models sampled sequentially and
  with picard (the main job).
- ``picard sample`` (:mod:`picard.cli.sample`): a shipped model or a diffusers pipeline
  folder, sampled by picard.
- ``picard bench`` (:mod:`picard.cli.bench`, :mod:`picard.cli.fidelity`): the benchmark
  matrix against the sequential sampler and the ParaDiGMS loop
  (:mod:`picard.cli.baselines`); the fidelity benchmark.
- ``picard odes`` (:mod:`picard.cli.odes`): ODEs and an SDE, sequential vs picard.

Shared: :mod:`picard.cli.common` (errors, argument types, progress bars),
:mod:`picard.cli.runs` (sampling a model both ways with one seed), :mod:`picard.cli.plots`,
:mod:`picard.cli.metrics`. The entry point is :func:`picard.cli.main.main`.

This package holds what the subcommands need; the scripts in ``benchmarks/`` import those
pieces from here and keep what only they share in ``benchmarks/harness/``.
"""
