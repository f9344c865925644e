"""Layer 4, search: space files, the Optuna study, the Tune driver and its callbacks."""
