"""Layer 5, results: tables, figures and exports read from a search directory's files alone; never starts Ray.

`load_search(DIR)` is the notebook API (`report/results.py`); `analyze` and `report` print and draw from it.
"""

from himari_ray.report.results import SearchResults, load_search

__all__ = ["SearchResults", "load_search"]
