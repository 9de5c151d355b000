"""The lab from Python: :func:`compare` trains a model with each normalization across batch
sizes, seeds and other axes and writes results, plots and a report, as ``normlab compare``
does (the command builds this call)."""

import normlab._lab_extra  # noqa: F401  (first: names the lab extra if it is missing)
from normlab.lab.comparison import CompareResult, compare

__all__ = ["CompareResult", "compare"]
