"""Session options for the test suite.

``--error-report`` measures how close normlab came to its oracles: it records
the largest |actual - expected| of every passing ``torch.testing.assert_close``
and prints it per test function and dtype at the end of the run
(``make accuracy``).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
import torch.testing

_largest: dict[tuple[str, str], float] = defaultdict(float)
_current_test: list[tuple[str, str] | None] = [None]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--error-report",
        action="store_true",
        help="print the largest |actual - expected| seen by each test's assert_close",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Patched before collection, so `from torch.testing import assert_close` in
    # a test module binds the recording version too.
    if not config.getoption("--error-report"):
        return
    original = torch.testing.assert_close

    def recording_assert_close(actual, expected, *args, **kwargs):
        original(actual, expected, *args, **kwargs)
        both_tensors = isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)
        if _current_test[0] and both_tensors and actual.is_floating_point() and actual.numel():
            diff = (actual.detach().double() - expected.detach().double()).abs().max().item()
            _largest[_current_test[0]] = max(_largest[_current_test[0]], diff)

    torch.testing.assert_close = recording_assert_close


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    params = getattr(item, "callspec", None)
    dtype = params.params.get("dtype", "") if params else ""
    _current_test[0] = (f"{item.path.name}::{item.originalname}", str(dtype).replace("torch.", ""))
    try:
        return (yield)
    finally:
        _current_test[0] = None


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _largest:
        return
    terminalreporter.section("largest |actual - expected| per test and dtype parameter")
    for (test, dtype), error in sorted(_largest.items()):
        terminalreporter.write_line(f"{error:10.2e}  {dtype or '-':9s} {test}")


@pytest.fixture
def run_cli(capsys):
    """Run ``normlab.cli.main(argv)`` in this process: (exit status, stdout, stderr)."""
    from normlab.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
