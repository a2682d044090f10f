"""Active-learning sample selection: uncertainty (`uncertainty`), image embeddings (`features`, cached with
the engine's vector cache `pose.cache`), the ANN indexes (`ann`), diversity (`diversity`), the selection
strategies (`strategies`) and montages of what was chosen (`montage`).

Import the submodules directly; this package imports nothing heavy.
"""

# Strategies that need the pose model (heatmap uncertainty); kept here so callers need not import torch.
NEEDS_MODEL = frozenset({"uncertainty", "hybrid", "ranked-hybrid", "mpe", "tta-consistency", "tta-hybrid"})
