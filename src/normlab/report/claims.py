"""What a claim is and how it is tested, as data: the declarations of the one claims engine.

- :class:`Claim`: what a source says (its statement, its words, the citation). Every claim
  normlab checks is declared once, in normlab.report.catalogue.
- :class:`ClaimTest`: one contrast of a claim: which groups of runs (its arms, :class:`Arm`, each
  with a weight and the fields its runs share), the per-run value it compares, which side
  of 0 the claim predicts (or, for an equivalence, the claim's margin), and whether it is
  the claim's primary test. normlab.report.compare_claims declares the tests a
  ``normlab compare`` sweep can run; normlab.study the study's.

normlab.report.evaluation evaluates a test on its groups of values (one function for both);
the HTML report and the markdown study render the evaluated objects. Nothing here reads a
record or formats a number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Side = Literal["greater", "less", "within"]
"""What a claim predicts of its test's estimate: > 0, < 0, or within ±margin."""
Scale = Literal["pp", "log10", "log10-abs"]
"""The unit of a test's estimate: percentage points, or a difference of log10 values
(shown as a ratio of geometric means), or of absolute log10 values."""


@dataclass(frozen=True)
class Claim:
    """A claim as its source states it."""

    id: str
    statement: str
    """The claim in one line: ``Batch norm degrades at small batch sizes``."""
    source: str
    """Who makes it: papers and tutorials."""
    quote: str = ""
    """The source's words when ``verbatim``, otherwise a paraphrase."""
    verbatim: bool = False
    margin: float | None = None
    """For a claim of no effect: the largest difference (in its tests' unit) that counts
    as none. Its tests are equivalence tests (side ``within``)."""
    stability: bool = False
    """The claim is about training stability: its evidence always counts diverged runs."""


@dataclass(frozen=True)
class Arm:
    """One group of runs in a test: its label, its weight in the contrast, and the fields
    its runs share (``experiment``, ``norm``, ``batch_size``, a model option...)."""

    label: str
    weight: float
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimTest:
    """One pre-declared contrast of ``claim``: Σ weight·mean(value) over ``arms``."""

    id: str
    claim: Claim
    side: Side
    arms: tuple[Arm, ...] = ()
    value: Callable[[Any], float | None] | None = None
    """The number each run contributes (None or non-finite: the run has none)."""
    measure: str = ""
    """What the estimate is, with its unit: ``final validation accuracy, pp``."""
    hypothesis: str = ""
    """The claim's precise testable form."""
    experiment: str = ""
    """The runs it reads: the experiment's name or its description."""
    comparison: str = ""
    """The contrast in words, such as ``ln minus none at batch 32``."""
    scale: Scale = "pp"
    primary: bool = True
    """The claim's pre-registered test (Holm-adjusted with the other primary tests when
    adjusted); secondary tests are reported unadjusted."""
    paired: bool = True
    """Pair the runs by seed when every arm holds one run per seed for the same seeds
    (the same initialization and data order): the contrast is then computed within each
    seed. Otherwise, or when False, the arms are independent groups (Welch)."""
    notes: tuple[str, ...] = ()
    """Facts about how the arms were chosen, shown with the evidence."""
    reason: str = ""
    """Why the test cannot be run (no experiment for it yet)."""

    @property
    def margin(self) -> float | None:
        """The equivalence margin of a ``within`` test (its claim's); None otherwise."""
        return self.claim.margin if self.side == "within" else None
