"""Active-learning sample selection: uncertainty (`uncertainty`), image embeddings (`features`), the
on-disk vector cache (`cache`), ANN diversity (`diversity`) and the selection strategies (`strategies`).

Import the submodules directly; this package imports nothing heavy.
"""

# Strategies that need the pose model (heatmap uncertainty); kept here so callers need not import torch.
NEEDS_MODEL = frozenset({"uncertainty", "hybrid", "ranked-hybrid"})
