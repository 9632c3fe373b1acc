"""diffusers pipelines with their denoising loop solved by picard.

- :mod:`~picard.adapters.pipelines.parallel`: :func:`parallelize` and the driver.
- :mod:`~picard.adapters.pipelines.registry`: :data:`PIPELINES`, one line per class.
- :mod:`~picard.adapters.pipelines.spec`: what a family hands to the driver.
- :mod:`~picard.adapters.pipelines.preamble`: what the families read off a call first.
- :mod:`~picard.adapters.pipelines.sd_parts`: the Stable Diffusion families' shared steps.
- one module per family: :mod:`~picard.adapters.pipelines.unconditional`,
  :mod:`~picard.adapters.pipelines.stable_diffusion`, ...
"""

from picard.adapters.pipelines.parallel import ParallelPipeline, parallelize
from picard.adapters.pipelines.registry import PIPELINES, Runner, runner_for

__all__ = ["PIPELINES", "ParallelPipeline", "Runner", "parallelize", "runner_for"]
