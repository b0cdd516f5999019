"""Policy: routing and fallback now; auth, limits, budgets, cache and the ledger as they land.

`pipeline.py` writes the order in which they apply, once.
"""
