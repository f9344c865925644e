"""Layer 5, results: tables, figures and exports read from a search directory's files alone; never starts Ray."""
