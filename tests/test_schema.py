"""The trial report schema: every key the writers put in a report is registered once, and readers see a
missing key as absent instead of crashing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from himari_ray import schema
from himari_ray.schema import (
    BAND_DISTANCE,
    FIELDS,
    HOLD_PCT_ALL,
    PREFLIGHT_SKIPPED,
    VAL_SORTINO,
    hold_pct,
    number,
    read_report,
    value,
)
from himari_ray.types import ACTION_NAMES, REGIME_NAMES

#: The package whose modules must not spell a report key.
PKG = Path(schema.__file__).resolve().parents[1]


def is_known(key: str) -> bool:
    """Registered, or a member of a documented family (`applied_<reward parameter>`)."""
    return key in FIELDS or key.startswith("applied_")


def test_every_key_of_a_skipped_and_an_aggregated_report_is_registered():
    from himari_ray.rl.scoring import aggregate, skipped_report

    skipped = skipped_report([], "CRISIS: HOLD-dominant", 123.0)
    assert all(is_known(k) for k in skipped), [k for k in skipped if not is_known(k)]
    member = {k: 1.0 for k in FIELDS if FIELDS[k].kind is float}
    member.update({schema.LEAK_ALARM: False, schema.PROFIT_OK: True})
    merged = aggregate([member, dict(member)], "worst")
    assert all(is_known(k) for k in merged), [k for k in merged if not is_known(k)]


def test_share_keys_cover_every_action_and_regime():
    for regime in (*REGIME_NAMES, "ALL"):
        for action in ACTION_NAMES:
            name = schema.action_pct(action, regime)
            assert name in FIELDS and FIELDS[name].unit == "%"
    assert hold_pct("CRISIS") == "hold_pct_CRISIS" and HOLD_PCT_ALL == "hold_pct_ALL"


def test_a_report_missing_keys_reads_as_absent():
    skipped = {BAND_DISTANCE: 160.0, PREFLIGHT_SKIPPED: True}  # no Sharpe, no Sortino, no shares
    full = read_report(skipped)
    assert full[BAND_DISTANCE] == 160.0 and full[PREFLIGHT_SKIPPED] is True
    assert math.isnan(full[VAL_SORTINO]) and math.isnan(full[hold_pct("LOW_VOL")])
    assert full[schema.LEAK_ALARM] is False and full[schema.PREFLIGHT] == ""
    assert math.isnan(number({}, "a_key_from_a_newer_version"))
    assert math.isnan(number({VAL_SORTINO: "text"}, VAL_SORTINO))  # text where a number belongs
    assert value({VAL_SORTINO: None}, VAL_SORTINO) != value({VAL_SORTINO: None}, VAL_SORTINO)  # NaN
    assert read_report({"extra": 1})["extra"] == 1  # unknown keys pass through


def test_adding_a_key_is_one_line_and_twice_is_refused():
    name = schema.key("test_only_metric", float, "A key registered by this test.", "pp")
    try:
        assert name == "test_only_metric" and FIELDS[name].doc.startswith("A key")
        assert math.isnan(read_report({})[name])
        with pytest.raises(ValueError, match="registered twice"):
            schema.key("test_only_metric", float, "again")
    finally:
        del FIELDS[name]


def test_every_field_has_a_one_line_doc_and_the_table_lists_it():
    table = schema.describe()
    for f in FIELDS.values():
        assert f.doc and "\n" not in f.doc, f.name
        assert f.name in table


def test_val_names_only_registered_trading_metrics():
    from himari_ray.env.metrics import trading_metrics

    metrics = trading_metrics([0, 1, 2], [0.01, -0.01, 0.02])
    assert all(schema.val(k) in FIELDS for k in metrics)  # every trading metric has its report key
    with pytest.raises(KeyError, match="register it"):
        schema.val("not_a_metric")


@pytest.mark.slow
def test_every_key_a_real_search_wrote_is_registered(real_search):
    out, _, _ = real_search
    unknown = set()
    for result in out.glob("tune/trial_*/result.json"):
        for line in result.read_text().splitlines():
            unknown |= {k for k in json.loads(line) if not is_known(k)}
    # Tune's own bookkeeping beside ours (not read by himari-ray: no need to register)
    tune_extra = {"done", "date", "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
                  "time_this_iter_s", "checkpoint_dir_name", "should_checkpoint", "experiment_tag"}  # fmt: skip
    assert unknown <= tune_extra, unknown - tune_extra


#: String literals that equal a report key's name but mean something else where they stand (path, literal).
NOT_REPORT_KEYS = {
    ("env/metrics.py", "band_distance"): "the function's name in __all__",
    ("policy/export.py", "iteration"): "the checkpoint's himari_trial_state.json field",
    ("rl/trainable.py", "iteration"): "the checkpoint's himari_trial_state.json field",
    ("searchdir/manifest.py", "iteration"): "the checkpoint's himari_trial_state.json field",
    ("search/confirm.py", "iteration"): "confirm.json's own record of each seed's iteration",
    ("rl/trainable.py", "policy_loss"): "RLlib's learner result key read into POLICY_LOSS",
    ("rl/trainable.py", "entropy"): "RLlib's learner result key read into ENTROPY",
    ("rl/trainable.py", "vf_explained_var"): "RLlib's learner result key read into VF_EXPLAINED_VAR",
    ("cli/search.py", "preflight"): "the `preflight` subcommand",
    ("report/text.py", "preflight"): "a column header",
    ("rl/config.py", "preflight"): "TrialConfig's preflight section",
    ("search/space.py", "objective"): "the space file's objective section",
    ("search/space.py", "leak_alarm"): "a space file key that moved (MOVED_KEYS)",
}


def literal_report_keys(root: Path = PKG) -> list[str]:
    """Every string literal outside the schema package that spells one of our report keys (Tune's own keys,
    such as `timestamp`, name data columns too, so only the keys himari-ray writes are checked)."""
    import ast

    ours = {name for name, f in FIELDS.items() if f.source == "himari"}
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("schema/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ours and (rel, node.value) not in NOT_REPORT_KEYS:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    return found


def test_no_module_spells_a_report_key_as_a_literal():
    """Keys go through the schema: a literal would silently read as absent after a rename."""
    assert literal_report_keys() == []


def test_the_literal_check_sees_a_planted_literal(tmp_path):
    import shutil

    pkg = tmp_path / "himari_ray"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "planted.py").write_text('def f(report):\n    return report["val_sharpe"]\n')
    assert literal_report_keys(pkg) == ["planted.py:2: 'val_sharpe'"]


def test_every_view_is_derived_from_the_schema():
    """analyze's columns, confirm's split metrics and the study's trial attributes are the schema's views."""
    from himari_ray.report.analysis import TABLE_METRICS
    from himari_ray.search.confirm import SPLIT_METRICS
    from himari_ray.search.study import TRIAL_ATTR_METRICS

    assert schema.shown(schema.ANALYZE) == TABLE_METRICS and BAND_DISTANCE in TABLE_METRICS
    assert (
        schema.shown(schema.CONFIRM) == SPLIT_METRICS and schema.for_split(schema.VAL_SHARPE, "test") == "test_sharpe"
    )
    assert schema.shown(schema.STUDY) == TRIAL_ATTR_METRICS and schema.DEPLOY in TRIAL_ATTR_METRICS
    assert schema.display(schema.VAL_NET_RETURN, -0.5) == "-50.0" and schema.display(BAND_DISTANCE, 4.25) == "4.2"
    assert schema.label(schema.VAL_NET_RETURN) == "net %" and schema.display(schema.VAL_SHARPE, math.nan) == "-"
