"""The benchmark's report prints ratios with 3 significant digits and judges each target on the printed value."""

from __future__ import annotations

import pytest

from proxy.devtools.report import Report, ratio_of


@pytest.mark.parametrize(("x", "text"), [(0.9994, "0.999x"), (0.99951, "1.00x"), (1.6, "1.60x"), (0.22, "0.220x"),
                                         (12.345, "12.3x")])
def test_ratios_have_three_significant_digits(x: float, text: str) -> None:
    assert ratio_of(x)[0] == text


@pytest.mark.parametrize(("x", "verdict"), [(0.9994, "0.999x  >= 1.00x  NOT MET"), (0.99951, "1.00x  >= 1.00x  met")])
def test_a_target_is_met_or_not_as_the_line_reads(x: float, verdict: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = Report("now", "loadgen", 50.0, "")
    text, ratio = ratio_of(x)
    report.add("proxy 1w / bare", text, ">= 1.00x", ratio)
    assert " ".join(capsys.readouterr().out.split()).endswith(" ".join(verdict.split()))
