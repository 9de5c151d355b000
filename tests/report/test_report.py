"""The report layer: Welch contrasts, claim verdicts, tables, plots, the HTML page.

Oracles: scipy's Welch t-test for two groups, a float64 hand formula for
four, constructed records whose verdicts are known, and headless Chromium
for the page as a browser sees it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from scipy import stats as scipy_stats

from normlab.report import (
    CLAIMS,
    RecordError,
    Sweep,
    contrast,
    render_report,
    summary_table,
    verdicts,
    verdicts_table,
)
from normlab.report.evaluation import CONTRADICTED, INCONCLUSIVE, SUPPORTED, TOO_FEW
from normlab.report.plots import BATCH_SIZE_FIGSIZE, DPI, curves_figsize
from normlab.report.tables import evidence, outcome
from report_fixtures import (
    CORRUPTIONS,
    corrupt,
    make_record,
    realistic_records,
    records_from_values,
    write_results,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = "/usr/bin/chromium"

# Three seeds each; the spreads (0.2 pp) are small next to the 2 pp differences.
HIGH = [0.970, 0.972, 0.974]
LOW = [0.950, 0.952, 0.954]
NOISY_A = [0.950, 0.990, 0.970]
NOISY_B = [0.955, 0.985, 0.970]


def by_key(found, key):
    return [finding for finding in found if finding.test.id == key]


def render_text(table) -> str:
    console = Console(record=True, width=160)
    console.print(table)
    return console.export_text()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- stats.contrast ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_two_group_contrast_matches_scipy_welch(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.9, 0.02, size=rng.integers(2, 8))
    b = rng.normal(0.9, 0.05, size=rng.integers(2, 8))
    result = contrast([a.tolist(), b.tolist()], [1, -1])
    oracle = scipy_stats.ttest_ind(a, b, equal_var=False)
    interval = oracle.confidence_interval(0.95)
    assert result.estimate == pytest.approx(a.mean() - b.mean(), abs=1e-14)
    assert result.df == pytest.approx(oracle.df, rel=1e-10)
    assert result.low == pytest.approx(interval.low, rel=1e-10)
    assert result.high == pytest.approx(interval.high, rel=1e-10)


def test_four_group_contrast_matches_hand_formula():
    groups = [[0.90, 0.93, 0.91], [0.96, 0.97], [0.97, 0.975, 0.972, 0.968], [0.96, 0.962, 0.959]]
    weights = [1.0, -1.0, -1.0, 1.0]
    arrays = [np.asarray(group, dtype=np.float64) for group in groups]
    terms = [w**2 * g.var(ddof=1) / g.size for w, g in zip(weights, arrays, strict=True)]
    se = math.sqrt(sum(terms))
    df = se**4 / sum(t**2 / (g.size - 1) for t, g in zip(terms, arrays, strict=True))
    estimate = sum(w * g.mean() for w, g in zip(weights, arrays, strict=True))
    half = scipy_stats.t.ppf(0.975, df) * se
    result = contrast(groups, weights)
    assert result.estimate == pytest.approx(estimate, abs=1e-14)
    assert result.se == pytest.approx(se, rel=1e-12)
    assert result.df == pytest.approx(df, rel=1e-12)
    assert (result.low, result.high) == pytest.approx((estimate - half, estimate + half))


def test_contrast_without_two_values_per_group_has_no_interval():
    result = contrast([[0.9], [0.8, 0.85]], [1, -1])
    assert result.estimate == pytest.approx(0.075)
    assert (result.low, result.high, result.df) == (None, None, None)
    assert not result.has_interval


def test_contrast_of_equal_values_is_a_point_interval():
    result = contrast([[0.1, 0.1, 0.1], [0.3, 0.3]], [1, -1])
    assert result.se == 0.0
    assert result.low == result.high == result.estimate == pytest.approx(-0.2)


def test_contrast_of_tiny_spreads_does_not_underflow():
    result = contrast([[0.0, 1e-160], [1e-160, 0.0]], [1, -1])
    assert result.low <= result.estimate <= result.high
    assert result.df == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("groups", "weights", "level", "message"),
    [
        ([[1.0, 2.0]], [1, -1], 0.95, "one weight per group"),
        ([[1.0, 2.0], []], [1, -1], 0.95, "at least one value"),
        ([[1.0, 2.0], [1.0, 3.0]], [1, -1], 95, "confidence level"),
    ],
)
def test_contrast_rejects_bad_input(groups, weights, level, message):
    with pytest.raises(ValueError, match=message):
        contrast(groups, weights, level=level)


values = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(values, min_size=2, max_size=4),
    weights=st.lists(st.sampled_from([-1.0, 1.0, 0.5, -2.0]), min_size=4, max_size=4),
)
def test_contrast_interval_contains_estimate_and_widens_with_level(groups, weights):
    weights = weights[: len(groups)]
    narrow, middle, wide = (contrast(groups, weights, level) for level in (0.8, 0.95, 0.99))
    for result in (narrow, middle, wide):
        assert result.low <= result.estimate <= result.high
    width = [result.high - result.low for result in (narrow, middle, wide)]
    assert width[0] <= width[1] <= width[2]


# --- claims ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ln", "none", "outcome"),
    [
        (HIGH, LOW, SUPPORTED),
        (LOW, HIGH, CONTRADICTED),
        (NOISY_A, NOISY_B, INCONCLUSIVE),
        ([0.97], [0.95], TOO_FEW),
    ],
)
def test_layer_norm_claim_outcomes(ln, none, outcome):
    found = by_key(
        verdicts(records_from_values({("ln", 32): ln, ("none", 32): none})), "ln-beats-none"
    )
    assert len(found) == 1
    verdict = found[0]
    assert verdict.verdict == outcome
    assert verdict.test.comparison == "ln \u2212 none at batch 32"
    assert verdict.estimate == pytest.approx(100 * (np.mean(ln) - np.mean(none)))
    assert verdict.n == (len(ln), len(none))
    assert (verdict.low is None) == (outcome == TOO_FEW)


def test_pairwise_claims_give_one_verdict_per_shared_batch_size():
    records = records_from_values(
        {
            ("ln", 16): HIGH,
            ("ln", 64): HIGH,
            ("none", 16): LOW,
            ("none", 64): LOW,
            ("none", 256): LOW,
        }
    )
    found = by_key(verdicts(records), "ln-beats-none")
    assert [v.test.comparison for v in found] == [
        "ln \u2212 none at batch 16",
        "ln \u2212 none at batch 64",
    ]


def test_a_sweep_compares_independent_groups_even_when_seeds_are_shared():
    # A seed effect shared by both norms: pairing would cancel it, Welch's interval counts it.
    ln = [0.930, 0.960, 0.990]
    none = [0.920, 0.951, 0.979]
    (verdict,) = by_key(verdicts(records_from_values({("ln", 32): ln, ("none", 32): none})),
                        "ln-beats-none")  # fmt: skip
    welch = scipy_stats.ttest_ind(
        [100 * v for v in ln], [100 * v for v in none], equal_var=False
    ).confidence_interval(0.95)
    assert (verdict.low, verdict.high) == pytest.approx((welch.low, welch.high))
    assert not verdict.paired and verdict.verdict == INCONCLUSIVE


def test_claims_the_sweep_does_not_cover_are_absent():
    found = verdicts(records_from_values({("none", 32): LOW, ("bn", 32): HIGH}))
    assert {v.test.id for v in found} == {"bn-beats-none", "bn-regularizes"}
    assert by_key(found, "bn-beats-none")[0].verdict == SUPPORTED


def test_claims_are_defined_in_one_table():
    assert len(CLAIMS) == 7
    assert len({entry.claim.id for entry in CLAIMS}) == 7
    assert all(entry.claim.statement and entry.claim.source for entry in CLAIMS)


def test_batch_norm_small_batch_claim_uses_layer_norm_reference():
    records = records_from_values(
        {
            ("bn", 4): [0.90, 0.91, 0.905],
            ("bn", 32): HIGH,
            ("bn", 256): HIGH,
            ("ln", 4): LOW,
            ("ln", 256): LOW,
            ("none", 4): LOW,
            ("none", 256): LOW,
        }
    )
    (verdict,) = by_key(verdicts(records), "bn-small-batch")
    minus = "\u2212"
    assert (
        verdict.test.comparison
        == f"(bn {minus} ln) at batch 4 {minus} (bn {minus} ln) at batch 256"
    )
    assert verdict.n == (3, 3, 3, 3)
    expected = 100 * (
        (np.mean([0.90, 0.91, 0.905]) - np.mean(LOW)) - (np.mean(HIGH) - np.mean(LOW))
    )
    assert verdict.estimate == pytest.approx(expected)
    assert verdict.verdict == SUPPORTED
    assert "reference ln" in evidence(verdict)
    assert "more optimizer steps" in evidence(verdict)


def test_batch_norm_small_batch_claim_falls_back_to_none_then_to_no_reference():
    base = {("bn", 4): [0.90, 0.91, 0.905], ("bn", 256): HIGH}
    with_none = {**base, ("ln", 4): LOW, ("none", 4): LOW, ("none", 256): LOW}
    (verdict,) = by_key(verdicts(records_from_values(with_none)), "bn-small-batch")
    assert "(bn \u2212 none)" in verdict.test.comparison
    assert "reference none" in evidence(verdict) and "ln was not" in evidence(verdict)

    (verdict,) = by_key(verdicts(records_from_values(base)), "bn-small-batch")
    assert verdict.test.comparison == "bn at batch 4 \u2212 bn at batch 256"
    assert verdict.n == (3, 3)
    assert "no reference" in evidence(verdict)
    assert verdict.verdict == SUPPORTED  # claimed side is < 0


def test_batch_norm_small_batch_claim_needs_two_batch_sizes():
    found = verdicts(records_from_values({("bn", 4): HIGH, ("ln", 4): HIGH, ("ln", 8): HIGH}))
    assert not by_key(found, "bn-small-batch")


@pytest.mark.parametrize(
    ("small", "large", "outcome"),
    [
        ([0.970, 0.971, 0.972], [0.969, 0.970, 0.971], SUPPORTED),  # 0.1 pp, tight
        ([0.975, 0.976, 0.977], [0.970, 0.971, 0.972], SUPPORTED),  # 0.5 pp: real but within
        ([0.960, 0.961, 0.962], [0.940, 0.941, 0.942], CONTRADICTED),  # 2 pp, tight
        (NOISY_A, NOISY_B, INCONCLUSIVE),  # 0 pp, interval wider than ±1 pp
        ([0.97], [0.96], TOO_FEW),
    ],
)
def test_layer_norm_batch_independence_is_an_equivalence_claim(small, large, outcome):
    found = verdicts(records_from_values({("ln", 8): small, ("ln", 128): large}))
    (verdict,) = by_key(found, "ln-batch-independent")
    assert verdict.verdict == outcome
    assert verdict.test.comparison == "ln at batch 8 \u2212 ln at batch 128"
    assert "margin ±1 pp" in evidence(verdict)


def test_scalar_and_channel_batch_norm_claims_use_smallest_and_largest_shared_batch():
    records = records_from_values(
        {
            ("bn", 4): LOW,
            ("bn", 8): LOW,
            ("bn", 64): HIGH,
            ("bn-scalar", 8): HIGH,
            ("bn-scalar", 64): LOW,
            ("bn-scalar", 512): LOW,
        }
    )
    (stable,) = by_key(verdicts(records), "scalar-stable")
    assert stable.test.comparison == "bn-scalar \u2212 bn at batch 8 (smallest)"
    assert stable.verdict == SUPPORTED
    assert "std 0.20 pp" in evidence(stable) and "0 of 3 diverged" in evidence(stable)
    (general,) = by_key(verdicts(records), "channel-generalizes")
    assert general.test.comparison == "bn \u2212 bn-scalar at batch 64 (largest)"
    assert general.verdict == SUPPORTED


def test_regularization_claim_compares_generalization_gaps():
    records = [
        make_record("none", 32, seed, val, train_acc=val + gap)
        for seed, (val, gap) in enumerate([(0.95, 0.04), (0.951, 0.041), (0.952, 0.039)])
    ] + [
        make_record("bn", 32, seed, val, train_acc=val + gap)
        for seed, (val, gap) in enumerate([(0.96, 0.01), (0.961, 0.012), (0.962, 0.011)])
    ]
    (verdict,) = by_key(verdicts(records), "bn-regularizes")
    assert "generalization gap" in verdict.test.measure
    assert verdict.test.comparison == "gap: none \u2212 bn at batch 32"
    assert verdict.estimate == pytest.approx(100 * (0.04 - 0.011))
    assert verdict.verdict == SUPPORTED
    assert evidence(verdict).startswith("gap(none) at batch 32: 4.00 pp")


def test_diverged_runs_count_in_means_and_are_flagged():
    records = [
        *records_from_values({("none", 8): LOW}),
        make_record("bn", 8, 0, 0.97),
        make_record("bn", 8, 1, 0.971),
        make_record("bn", 8, 2, 0.10, diverged_epoch=2),
    ]
    (verdict,) = by_key(verdicts(records), "bn-beats-none")
    assert verdict.estimate == pytest.approx(100 * (np.mean([0.97, 0.971, 0.10]) - np.mean(LOW)))
    assert "1 of 3 diverged" in evidence(verdict)
    text = render_text(summary_table(records))
    (bn_row,) = [line for line in text.splitlines() if " bn " in line]
    assert "1 of 3" in bn_row


def test_verdicts_are_per_experiment_and_series_are_labelled():
    records = records_from_values({("ln", 32): HIGH, ("none", 32): LOW}) + records_from_values(
        {("ln", 32): LOW, ("none", 32): HIGH}, lr=0.01
    )
    sweep = Sweep.from_records(records)
    assert sweep.experiments == ("lr=0.001", "lr=0.01")
    assert set(sweep.series) == {
        "ln (lr=0.001)",
        "none (lr=0.001)",
        "ln (lr=0.01)",
        "none (lr=0.01)",
    }
    found = by_key(verdicts(records), "ln-beats-none")
    assert [(v.test.experiment, v.verdict) for v in found] == [
        ("lr=0.001", SUPPORTED),
        ("lr=0.01", CONTRADICTED),
    ]


def test_a_record_without_a_needed_field_is_named():
    record = make_record("bn", 32, 0, 0.9)
    del record["final"]["val_acc"]
    with pytest.raises(RecordError, match=record["run_id"]):
        verdicts([record])


# --- tables ----------------------------------------------------------------


def test_summary_table_rows_and_values():
    records = records_from_values({("bn", 32): HIGH, ("bn", 128): LOW, ("ln", 32): [0.96]})
    for record, agreement in zip(records[:3], (0.9, 0.8, 0.7), strict=True):  # bn at 32
        record["eval_parity"] = {"batch_size": 32, "prediction_agreement": agreement}
    text = render_text(summary_table(records))
    rows = {
        tuple(line.split("│")[1:3]): line
        for line in text.splitlines()
        if line.count("│") > 3 and "norm" not in line
    }
    rows = {(norm.strip(), batch.strip()): line for (norm, batch), line in rows.items()}
    assert set(rows) == {("bn", "32"), ("bn", "128"), ("ln", "32")}
    cells = [cell.strip() for cell in rows[("bn", "32")].split("│")[1:-1]]
    # val acc mean ± std, seeds, train acc (val + 2 pp), gap, train/eval agreement, diverged,
    # seconds
    assert cells[2:] == ["97.20 ± 0.20", "3", "99.20", "+2.00", "80.0", "—", "1.5"]
    assert "96.00" in rows[("ln", "32")] and " 1 " in rows[("ln", "32")]
    assert [cell.strip() for cell in rows[("ln", "32")].split("│")[1:-1]][6] == "—"
    assert "digits · mlp" in text


def test_tables_print_record_strings_literally():
    records = records_from_values({("ln", 32): HIGH, ("none", 32): LOW}, optimizer="[red]sgd")
    records += records_from_values({("ln", 32): LOW, ("none", 32): HIGH})
    assert "ln (optimizer=[red]sgd)" in render_text(summary_table(records))
    assert "[optimizer=[red]sgd]" in render_text(verdicts_table(verdicts(records)))


def test_verdicts_table_shows_every_verdict():
    records = records_from_values({("ln", 32): HIGH, ("none", 32): LOW, ("bn", 32): [0.9]})
    found = verdicts(records)
    text = render_text(verdicts_table(found))
    for verdict in found:
        assert verdict.test.comparison in text
        assert outcome(verdict) in text
    assert "Layer norm improves accuracy" in text
    assert "needs ≥ 2 seeds" in text, "a configuration run with one seed"


def test_no_records_give_no_verdicts_and_an_empty_table():
    assert verdicts([]) == []
    assert summary_table([]).row_count == 0


# --- render_report ----------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    directory = write_results(tmp_path_factory.mktemp("report"), realistic_records())
    return render_report(directory)


def test_render_report_writes_pngs_of_the_expected_size(report):
    assert report.html.exists() and report.batch_size is not None
    curves = report.curves.read_bytes()
    width, height = curves_figsize(batch_size_count=3, series_count=3)
    assert png_size(curves) == (round(width * DPI), round(height * DPI))
    assert png_size(report.batch_size.read_bytes()) == tuple(
        round(inches * DPI) for inches in BATCH_SIZE_FIGSIZE
    )


def test_render_report_output_is_deterministic_and_leaks_no_figures(report, tmp_path):
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    again = render_report(write_results(tmp_path, realistic_records()))
    assert again.curves.read_bytes() == report.curves.read_bytes()
    assert plt.get_fignums() == open_figures


def test_one_batch_size_draws_no_batch_size_plot(tmp_path):
    (tmp_path / "batch_size.png").write_bytes(b"stale")
    files = render_report(write_results(tmp_path, records_from_values({("bn", 32): HIGH})))
    assert files.batch_size is None
    assert not (tmp_path / "batch_size.png").exists()
    assert png_size(files.curves.read_bytes())[0] == round(curves_figsize(1, 1)[0] * DPI)
    assert "<img" in files.html.read_text() and "against batch size" not in files.html.read_text()


def test_html_is_self_contained_html5(report):
    page = report.html.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in page and '<html lang="en">' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(sources) == 2
    for source in sources:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        assert base64.b64decode(source[len(prefix) :], validate=True)[:8] == PNG_SIGNATURE
    for needle in ("<title>normlab report: digits · mlp</title>", "Welch", "<details>", "1 of 27"):
        assert needle in page, needle
    assert page.count("<tr") > 27  # every run is listed


def test_html_lists_configuration_versions_and_verdicts(report):
    page = report.html.read_text(encoding="utf-8")
    for needle in (
        "varies across runs",
        "same in every run",
        "2.13.0+cpu",
        "3.11.7",
        "training time",
        "Batch norm degrades at small batch sizes",
        'class="badge',
        "95% interval",
    ):
        assert needle in page, needle


def test_html_escapes_record_strings(tmp_path):
    evil = "<script>alert(1)</script>"
    records = records_from_values({("ln", 32): HIGH, ("none", 32): LOW}, optimizer=evil)
    records += records_from_values({("ln", 32): LOW, ("none", 32): HIGH}, dataset='digits"><b>')
    page = render_report(write_results(tmp_path, records)).html.read_text(encoding="utf-8")
    assert evil not in page and "<script" not in page and '"><b>' not in page
    assert html.escape(evil) in page


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_render_report_without_records_says_what_to_do(tmp_path, content):
    if content is not None:
        (tmp_path / "results.jsonl").write_text(content)
    with pytest.raises(ValueError, match="no finished runs in") as error:
        render_report(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert f"normlab compare --out {tmp_path}" in str(error.value)


# --- the page in a browser ----------------------------------------------------

PROBE = """<script>
addEventListener("load", () => {
  document.body.dataset.imgs = JSON.stringify(Array.from(document.images, (img) => ({
    w: img.naturalWidth, h: img.naturalHeight, complete: img.complete })));
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(
                f"{CHROMIUM} is missing; install Debian's chromium package (apt install chromium)."
            )
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    return CHROMIUM


def run_chromium(
    chromium: str, profile: Path, page: Path, *args: str
) -> subprocess.CompletedProcess:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def console_problems(stderr: str) -> list[str]:
    """Lines where the page wrote to the console or threw.

    Chromium logs every console message, console.error included, as
    ``INFO:CONSOLE``; the report has no scripts, so any console line is a problem.
    """
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def image_probe(chromium: str, tmp_path: Path, page: Path) -> list[dict]:
    """Load a copy of ``page`` with PROBE injected; each image's natural size and state."""
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    result = run_chromium(
        chromium, tmp_path / "profile-probe", probed, "--virtual-time-budget=5000", "--dump-dom"
    )
    found = re.search(r'data-imgs="([^"]*)"', result.stdout)
    assert found, "the probe did not run: " + result.stdout[:500]
    return json.loads(html.unescape(found.group(1)))


def test_browser_checks_catch_a_broken_page(chromium, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>'
        '<body><img src="data:image/png;base64,AAAA">'
        '<script>console.error("deliberate"); missingFunction();</script></body></html>'
    )
    stderr = run_chromium(chromium, tmp_path / "profile", broken, "--dump-dom").stderr
    problems = console_problems(stderr)
    assert any("deliberate" in line for line in problems)
    assert any("Uncaught" in line for line in problems)
    assert image_probe(chromium, tmp_path, broken) == [{"w": 0, "h": 0, "complete": True}]


def test_report_images_load_in_a_browser(chromium, report, tmp_path):
    images = image_probe(chromium, tmp_path, report.html)
    assert len(images) == 2
    assert all(image["complete"] and image["w"] > 0 and image["h"] > 0 for image in images)
    assert (images[0]["w"], images[0]["h"]) == png_size(report.curves.read_bytes())


def test_report_page_logs_no_console_errors(chromium, report, tmp_path):
    result = run_chromium(chromium, tmp_path / "profile", report.html, "--dump-dom")
    assert console_problems(result.stderr) == []
    assert "Claims" in result.stdout


def test_report_screenshot_is_not_blank(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(
        chromium,
        tmp_path / "profile",
        report.html,
        f"--screenshot={shot}",
        "--window-size=1280,2400",
    )
    data = shot.read_bytes()
    assert png_size(data) == (1280, 2400)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert len(data) > 50_000
    assert pixels[..., :3].std() > 0.05  # text, tables and plots, not a blank page


def test_a_norm_keeps_its_colour_whatever_else_the_sweep_ran():
    """bn is drawn in the same colour next to ln as next to none and gn, so reports compare
    at a glance; series that are not one norm each are coloured in order."""
    from normlab.report.plots import _styles

    first = Sweep.from_records(records_from_values({("none", 32): [0.9], ("bn", 32): [0.9]}))
    second = Sweep.from_records(
        records_from_values({("gn", 32): [0.9], ("ln", 32): [0.9], ("bn", 32): [0.9]})
    )
    assert _styles(first)["bn"] == _styles(second)["bn"]
    assert len({style["color"] for style in _styles(second).values()}) == 3


# --- a record the report cannot use is named before anything is written ---------------


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_normlab_report_names_the_file_and_line_of_a_corrupt_record_and_writes_nothing(
    tmp_path, run_cli, case
):
    records = records_from_values({("bn", 32): HIGH, ("none", 32): LOW})
    records[4] = corrupt(records[4], case)
    write_results(tmp_path, records)
    status, _, stderr = run_cli(["report", str(tmp_path)])
    assert status == 2, stderr
    assert f"{tmp_path / 'results.jsonl'} line 5" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_normlab_report_refuses_a_run_recorded_twice_naming_both_lines(tmp_path, run_cli):
    records = records_from_values({("bn", 32): HIGH, ("none", 32): LOW})
    write_results(tmp_path, [*records, {**records[1], "final": {**records[1]["final"]}}])
    status, _, stderr = run_cli(["report", str(tmp_path)])
    assert status == 2, stderr
    assert f"{tmp_path / 'results.jsonl'} lines 2 and 7" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_verdicts_refuse_two_records_of_one_run():
    records = records_from_values({("bn", 32): HIGH, ("none", 32): LOW})
    with pytest.raises(RecordError, match=rf"{records[0]['run_id']}.*twice"):
        verdicts([*records, records[0]])
