"""What the claims study's report is made of: each claim's section, declared (its tests as
data, normlab.report.claims) and evaluated (its findings), and the words the declarations
share."""

from __future__ import annotations

from dataclasses import dataclass, field

from normlab.report.claims import ClaimTest
from normlab.report.evaluation import Finding
from normlab.study.plan import Budget


@dataclass(frozen=True)
class StudyTest:
    """A declared test and the experiment whose adequacy gates its verdict: its models must
    reach their validation threshold or, with ``fit``, fit their training set. Without an
    experiment (``trained_on`` empty) the test is not planned yet."""

    test: ClaimTest
    trained_on: str = ""
    fit: bool = False


@dataclass(frozen=True)
class DeclaredSection:
    """One claim in the report as declared: its tests, its figure and its tables, by the
    names normlab.study.tables knows them by."""

    key: str
    title: str
    tests: tuple[StudyTest, ...]
    figure: str
    tables: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Section:
    """One claim in the report: its tests evaluated, its figure and its tables' names."""

    key: str
    title: str
    tests: tuple[Finding, ...]
    figure: str
    tables: tuple[str, ...] = field(default=())


ACC = "final validation accuracy, pp"


def experiment_text(b: Budget, what: str, epochs: int | None = None) -> str:
    """``what``, then the epochs and the training set of ``b``."""
    data = "the 60,000 training images" if b.subset is None else f"a {b.subset}-image subset"
    return f"{what}; {epochs or b.epochs} epochs on {data}, validated on the 10,000 test images"
