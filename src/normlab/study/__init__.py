"""The claims study: every claim of the normalization tutorials as an experiment on MNIST,
an estimate with a 95% interval and a Holm-adjusted verdict, in one markdown report.

>>> from normlab.study import run_study
>>> run_study("data/mnist", Path("runs/claims"), Path("docs/claims"))  # doctest: +SKIP
"""

import normlab._lab_extra  # noqa: F401  (first: names the lab extra if it is missing)
from normlab.study.plan import BUDGETS, Budget, plan
from normlab.study.run import StudyResult, run_study

__all__ = ["BUDGETS", "Budget", "StudyResult", "plan", "run_study"]
