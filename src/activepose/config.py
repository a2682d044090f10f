"""Defaults that several modules share, each stated once (the paper's values)."""

INPUT_SIZE = 256  # network input side in pixels (letterboxed square); a multiple of the stride 8
TH_HM = 0.3  # uncertainty: a keypoint is confident when its smoothed heatmap peak reaches thHM
