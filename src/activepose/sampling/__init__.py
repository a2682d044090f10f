"""Active-learning sample selection: uncertainty (`uncertainty`), image embeddings (`features`), the
on-disk vector cache (`cache`), ANN diversity (`diversity`) and the selection strategies (`strategies`).

Import the submodules directly; this package imports nothing heavy.
"""
