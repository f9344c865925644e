"""Human-readable summary of a dataset for `himari-ray data inspect`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from himari_ray.data.regime import regime_shares
from himari_ray.types import REGIME_NAMES, SPLIT_NAMES, Dataset


def _provenance(meta: dict) -> list[str]:
    """Source, import report and build settings, as recorded in the metadata."""
    src = meta.get("source", {})
    lines = [f"source: {src.get('kind', '?')} {src.get('file', '')}".rstrip()]
    imp = src.get("import")
    if imp:
        gaps = imp["gaps"]
        longest = max((h for _, h in gaps), default=0)
        lines.append(
            f"import: layout {imp['layout']}, {imp['rows_read']} rows read, {imp['duplicates_removed']} duplicates "
            f"removed, {'re-sorted' if imp['was_unsorted'] else 'sorted'}, {len(gaps)} gaps "
            f"({imp['missing_hours']} missing hours, longest {longest} h; filled bars are never traded)"
        )
    settings = meta.get("settings")
    if settings:
        det, den = settings["detector"], settings["denoise"]
        lines.append(
            f"regime detector: crisis_pct {det['crisis_pct']}, high_pct {det['high_pct']}, min_dwell "
            f"{det['min_dwell']}; denoise: {'on' if den['enabled'] else 'off'} (q {den['q']}, r {den['r']}); "
            f"warm-up dropped: {meta.get('warmup_bars')} bars"
        )
    return lines


def describe_dataset(ds: Dataset, where: str | Path) -> str:
    lines = [f"dataset {where}"]
    try:
        lines += _provenance(ds.metadata)
    except (KeyError, TypeError, ValueError, AttributeError):
        # The arrays verified; only the descriptive record is damaged: say so rather than guess.
        lines.append("source: metadata.json's provenance record is unreadable (edited or damaged)")
    lines.append(f"features: {ds.n_features} ({ds.train.features.dtype})")
    header = f"{'split':6} {'bars':>6}  {'start':25} {'end':25} " + " ".join(f"{r:>8}" for r in REGIME_NAMES)
    lines += ["", header + f" {'untradable':>10}"]
    for name in SPLIT_NAMES:
        s = ds.split(name)
        shares = regime_shares(s.regime_ids).values()
        start, end = (np.datetime64(int(s.timestamps[i]), "ns") for i in (0, -1))
        lines.append(
            f"{name:6} {len(s):6d}  {str(start)[:19] + 'Z':25} {str(end)[:19] + 'Z':25} "
            + " ".join(f"{v:7.1f}%" for v in shares)
            + f" {int((~s.tradable).sum()):10d}"
        )
    non_finite = sum(int((~np.isfinite(ds.split(n).features)).sum()) for n in SPLIT_NAMES)
    lines += ["", f"feature summary (train split, before scaling); non-finite values in all splits: {non_finite}"]
    f = ds.train.features.astype(np.float64)
    lines.append(f"{'feature':18} {'mean':>11} {'std':>11} {'min':>11} {'max':>11}")
    for i, name in enumerate(ds.feature_names):
        col = f[:, i]
        lines.append(f"{name:18} {col.mean():11.4g} {col.std():11.4g} {col.min():11.4g} {col.max():11.4g}")
    return "\n".join(lines)
