"""The search directory: what a search writes and every reader reads, in one place (no Ray).

A search directory holds `search.json` (the manifest, `SearchManifest`), `space.yaml` (the space used),
`study.db` (the Optuna study, unless an external storage was given), and under `tune/` one directory per
trial (`trial_<n:04d>_<trial id>`, n = Tune's trial number, counted from 1: the number every himari-ray
output uses) holding `result.json` (one JSON object per report), `params.json`, its checkpoints,
`error.txt` when the trial crashed, and Tune's `experiment_state-*.json` (trial statuses, plain JSON; its
pickled fields are never decoded).

Three rooms: `manifest` (the paths, `search.json`, checkpoints, confirm's record), `trials` (reading the
trials and what became of each) and `ranking` (the one ranking every output names its best trial by). Every
name is importable from here, the one place readers import it from.
"""

# Re-exported: readers import every name of the search directory from himari_ray.searchdir.
# ruff: noqa: F401
from himari_ray.searchdir.manifest import (
    CONFIRM_JSON,
    CONFIRM_MD,
    MODULE_IN_CHECKPOINT,
    SEARCH_JSON,
    SPACE_YAML,
    TUNE_DIR,
    SearchManifest,
    best_checkpoint,
    read_confirm,
    trial_dirs,
    trial_state,
)
from himari_ray.searchdir.ranking import best_trial, feasible, rank_key, ranked, trained, untrained_reason
from himari_ray.searchdir.trials import (
    COLLAPSED,
    CRASHED,
    FINISHED,
    LISTED_LINES,
    RUNNING,
    SKIPPED,
    STATUS_HELP,
    STOPPED,
    SearchRun,
    TrialRun,
    bands_of,
    is_report,
    load_search_run,
    read_reports,
    searched_value,
    trial_status,
    tune_statuses,
    unreadable_file,
)
