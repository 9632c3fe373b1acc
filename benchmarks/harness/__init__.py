"""What the benchmark scripts share and the ``picard`` command does not need.

The scripts in ``benchmarks/`` run as ``python benchmarks/<script>.py`` from the repository
root, so their folder is on ``sys.path`` and they ``from harness import ...``; the tests
put ``benchmarks/`` on the path themselves. What a ``picard`` subcommand also runs stays
in :mod:`picard.cli`, and the scripts import it from there: the ParaDiGMS loop
(:mod:`picard.cli.baselines`, for ``picard bench``), the models of the matrix
(:func:`picard.cli.bench.bench_model`), sampling a model both ways
(:mod:`picard.cli.runs`), the fidelity cases (:mod:`picard.cli.fidelity`, for
``picard bench --fidelity``) and the plots (:mod:`picard.cli.plots`).

- :func:`seeded_start` (:mod:`harness.seeds`): a run's starting latent and generator.
- :func:`write_results` (:mod:`harness.results`): a benchmark's ``.json`` and ``.md``.
- :func:`interleaved` (:mod:`harness.timing`): competing runs' median seconds, side by side;
  :data:`harness.timing.SETTLE` warm-up rounds let picard's repeated ``odeint`` calls settle first.
- :func:`backward_by_sweeps`, :func:`newton_check` (:mod:`harness.forcing`): one of
  picard's automatic choices forced, for side-by-side runs.
"""

from harness.forcing import backward_by_sweeps, newton_check
from harness.results import write_results
from harness.seeds import seeded_start
from harness.timing import interleaved

__all__ = ["backward_by_sweeps", "interleaved", "newton_check", "seeded_start", "write_results"]
