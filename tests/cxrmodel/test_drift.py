"""Drift statistics: PSI and KS against a quantile reference, categorical PSI and new categories."""
from __future__ import annotations

import numpy as np
import pytest

from cxrmodel import drift as D


@pytest.fixture(scope="module")
def ref():
    return D.numeric_reference(np.random.default_rng(0).normal(0.0, 1.0, 5000))


def test_same_distribution_is_stable(ref):
    live = np.random.default_rng(1).normal(0.0, 1.0, 400)
    c = D.compare_numeric(ref, live)
    assert c["verdict"] == D.STABLE and c["psi"] < D.PSI_MODERATE and c["ks_p"] > D.KS_ALPHA


def test_shifted_distribution_drifts(ref):
    live = np.random.default_rng(2).normal(1.0, 1.0, 400)
    c = D.compare_numeric(ref, live)
    assert c["verdict"] == D.DRIFT and c["psi"] > D.PSI_DRIFT and c["ks_d"] > 0.3 and c["ks_p"] < 1e-10


def test_psi_by_hand_on_deciles():
    # reference 0..100 uniform: deciles at 10, 20, ... 90; live all in the lowest bin
    reference = D.numeric_reference(np.arange(0, 101, dtype=float))
    live = [1.0] * 50
    # bin 1 actual 1.0 vs expected 0.1; nine empty bins count half an image each (0.5/50) vs 0.1;
    e = 0.5 / 50
    expected = (1.0 - 0.1) * np.log(1.0 / 0.1) + 9 * (e - 0.1) * np.log(e / 0.1) \
        + 0.0  # the outer bins are empty in both and add nothing
    assert D.psi_numeric(reference, live) == pytest.approx(expected, rel=1e-6)
    assert D.psi_numeric(reference, np.arange(0, 101, dtype=float)) == pytest.approx(0.0, abs=1e-3)


def test_ks_p_value_matches_kolmogorov_at_a_known_point():
    # lambda = 1.36 gives p ~ 0.049 (the classic 5% critical value)
    n = 10_000
    d = 1.36 / (np.sqrt(n) + 0.12 + 0.11 / np.sqrt(n))
    assert D.kolmogorov_p(d, n) == pytest.approx(0.049, abs=0.002)


def test_categorical_new_manufacturer_and_inverted_photometric_drift():
    ref = D.categorical_reference(["ACME"] * 90 + ["Other Corp"] * 10)
    same = D.compare_categorical(ref, ["ACME"] * 45 + ["Other Corp"] * 5)
    assert same["verdict"] == D.STABLE and same["psi"] == pytest.approx(0.0) and same["new_share"] == 0.0
    new = D.compare_categorical(ref, ["ACME"] * 20 + ["NEWCO"] * 20)
    assert new["verdict"] == D.DRIFT and new["new_categories"] == ["NEWCO"] and new["new_share"] == 0.5
    photo = D.categorical_reference(["MONOCHROME2"] * 100)
    inverted = D.compare_categorical(photo, ["MONOCHROME1"] * 40)
    assert inverted["verdict"] == D.DRIFT and inverted["psi"] > D.PSI_DRIFT


def test_too_few_and_no_reference_give_no_verdict(ref):
    assert D.compare_numeric(ref, [0.0] * 5)["verdict"] == D.TOO_FEW
    assert D.compare_numeric(None, [0.0] * 500)["verdict"] == D.NO_REFERENCE
    assert D.compare_categorical(None, ["A"] * 500)["verdict"] == D.NO_REFERENCE


def test_tied_reference_does_not_flag_identical_values():
    r = D.numeric_reference([12.0] * 200)
    assert D.compare_numeric(r, [12.0] * 50)["verdict"] == D.STABLE
    assert D.compare_numeric(r, [8.0] * 50)["verdict"] == D.DRIFT
    # the same images scored in another batch size differ in the last float bits: still the same
    assert D.compare_numeric(r, [12.0 + 3e-6] * 25 + [12.0 - 2e-6] * 25)["verdict"] == D.STABLE
    # half the images below a constant reference: the outer bin sees them
    half = D.compare_numeric(r, [12.0] * 25 + [8.0] * 25)
    assert half["verdict"] == D.DRIFT and half["psi"] > D.PSI_DRIFT


def test_score_reference_records_positive_rate():
    P = np.array([[0.1, 0.9], [0.6, 0.2], [0.7, 0.3], [0.2, 0.8]])
    s = D.score_reference(P, ["A", "B"], [0.5, 0.5])
    assert s["A"]["positive_rate"] == 0.5 and s["B"]["n"] == 4 and len(s["A"]["quantiles"]) == 101
