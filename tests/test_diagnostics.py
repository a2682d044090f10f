"""Informativeness of an uncertainty score against per-image error, where the right answer is known."""

from __future__ import annotations

import math

import numpy as np

from activepose.sampling.diagnostics import informativeness


def test_a_score_that_orders_the_errors_is_perfect_and_its_reverse_is_misleading():
    pck = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])  # errors 0.1 ... 0.9
    good = informativeness([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], pck)
    assert good["n"] == 6 and good["spearman"] == 1.0 and good["auroc"] == 1.0
    bad = informativeness([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], pck)
    assert bad["spearman"] == -1.0 and bad["auroc"] == 0.0
    rng = np.random.default_rng(0)
    noise = informativeness(rng.random(2000), rng.random(2000))
    assert abs(noise["spearman"]) < 0.06 and abs(noise["auroc"] - 0.5) < 0.04


def test_a_weak_model_that_finds_nobody_in_most_images_still_gets_an_auroc():
    """More than half the images at the largest error (PCK 0): they are the worse half, ties included."""
    pck = [0, 0, 0, 0, 0.3, 0.6]
    result = informativeness([0.9, 0.8, 0.95, 0.7, 0.2, 0.1], pck)
    assert result["auroc"] == 1.0
    assert informativeness([0.1, 0.2, 0.15, 0.3, 0.9, 0.8], pck)["auroc"] == 0.0


def test_undefined_where_it_cannot_be_measured():
    assert math.isnan(informativeness([1, 1, 1, 1], [0.1, 0.5, 0.2, 0.9])["spearman"])  # constant score
    assert math.isnan(informativeness([1, 2, 3], [0.5, 0.5, 0.5])["auroc"])  # constant error
    few = informativeness([1, 2], [0.1, 0.9])
    assert few["n"] == 2 and math.isnan(few["auroc"])
    partial = informativeness([0.1, 0.2, np.nan, 0.8, 0.9], [0.9, 0.8, 0.5, np.nan, 0.1])
    assert partial["n"] == 3 and partial["spearman"] == 1.0  # images without a score or a PCK are left out
