"""activepose: hybrid active learning for bottom-up human pose estimation."""

__version__ = "0.1.0"
