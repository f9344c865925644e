"""Causal four-regime detector for hourly returns (ARCHITECTURE §2.4).

Row t of every output is computed from `returns[:t+1]` only, so labels can be attached to a bar before the
policy acts on it without leaking the future. Indicators (computed in `data/regime_stats.py`), with r the
hourly returns (defaults in brackets):

* vol[t]            population std (ddof=0, as the seed's `np.std`) of the last `vol_window` [24] returns
                    * sqrt(8760) (annualised).
* vol_pct[t]        share of the last `pct_window` [168] vol values (including vol[t]) strictly below vol[t].
* trend_strength[t] over the last `trend_window` [48] returns: |sum r| / (std(r) * sqrt(trend_window))
                    (std with ddof=0, as the seed: with ddof=1 values just above 0.3 / 0.6 fall below)
                    * consistency, where consistency is the share of those returns with the sign of their sum;
                    capped at 1, and 0 when std(r) is 0.
* vol_trend[t]      mean vol of the last `vol_trend_recent` [12] bars / mean vol of the older part of the
                    trend window (bars t-47 .. t-12) - 1.

Decision table (lower bounds inclusive; pct = vol_pct, trend = trend_strength, vt = vol_trend):

    pct >= crisis_pct [0.90]          CRISIS
    high_pct [0.75] <= pct < crisis   TRENDING if trend >= trend_strong [0.6] else HIGH_VOL
    mid_pct [0.50] <= pct < high      TRENDING if trend >= trend_strong
                                      else, if trend >= trend_weak [0.3]: HIGH_VOL if vt > vol_trend_mid [0.10]
                                                                          else TRENDING
                                      else HIGH_VOL if vt > vol_trend_low [0.05] else LOW_VOL
    low_pct [0.25] <= pct < mid       TRENDING if trend >= trend_weak else LOW_VOL
    pct < low_pct                     LOW_VOL

Confidence is 0.5 + 0.45 * min(1, margin), where margin is the smallest scaled distance between an input and
a threshold it was compared with on the way to its leaf (see `regime_confidence`). Optional hysteresis
(`min_dwell`) keeps the previous output until a new raw decision has held for `min_dwell` consecutive bars;
it only looks back, so it stays causal (at the price of a `min_dwell - 1` bar lag on switches).

On an hourly grid with filled bars (exchange outages), `detect_regimes_real_bars` runs the detector over the
real bars only, as the seed did (its windows skip missing hours): flat filled bars inside the windows would
read a +6% move after an outage as LOW_VOL. A filled bar carries the label of the last real bar before it.

The first `warmup_bars(cfg)` rows (190 for the defaults, plus any leading NaN returns such as the one from
`pct_change`) have undefined indicators; they are labelled LOW_VOL with confidence 0.5 and callers drop them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from himari_ray.data.regime_stats import rolling_vol, trend_strength, vol_percentile, vol_trend
from himari_ray.types import Regime, StrictModel

#: Scale of each input's distance to a threshold at which confidence saturates at 0.95 (see `regime_confidence`).
CONF_SCALE_PCT = 0.10


CONF_SCALE_TREND = 0.15


CONF_SCALE_VOL_TREND = 0.10


CONF_MIN = 0.5


CONF_MAX = 0.95


class RegimeDetectorConfig(StrictModel):
    """Windows and thresholds of the regime detector; the defaults are ARCHITECTURE §2.4's."""

    vol_window: int = Field(24, ge=2, description="Bars in the rolling std that defines vol.")
    pct_window: int = Field(168, ge=2, description="Bars of vol history that vol_pct ranks the current vol in.")
    trend_window: int = Field(48, ge=3, description="Bars over which trend_strength and vol_trend are measured.")
    vol_trend_recent: int = Field(12, ge=1, description="Most recent bars of the trend window compared in vol_trend.")
    crisis_pct: float = Field(0.90, ge=0, le=1, description="vol_pct at or above which the regime is CRISIS.")
    high_pct: float = Field(0.75, ge=0, le=1, description="Lower vol_pct bound of the high-volatility band.")
    mid_pct: float = Field(0.50, ge=0, le=1, description="Lower vol_pct bound of the middle band.")
    low_pct: float = Field(0.25, ge=0, le=1, description="vol_pct below which the regime is always LOW_VOL.")
    trend_strong: float = Field(0.6, ge=0, le=1, description="trend_strength that counts as trending in any band.")
    trend_weak: float = Field(0.3, ge=0, le=1, description="trend_strength that counts as trending in calm bands.")
    vol_trend_mid: float = Field(0.10, description="vol_trend above which a weak trend in the middle band is HIGH_VOL.")
    vol_trend_low: float = Field(0.05, description="vol_trend above which a trendless middle band is HIGH_VOL.")
    min_dwell: int = Field(
        1, ge=1, description="Bars a new raw regime must persist before the output switches (1 = no hysteresis)."
    )

    @model_validator(mode="after")
    def _thresholds_are_ordered(self) -> RegimeDetectorConfig:
        if not self.low_pct < self.mid_pct < self.high_pct < self.crisis_pct:
            raise ValueError(
                "vol_pct thresholds must satisfy low_pct < mid_pct < high_pct < crisis_pct, got "
                f"{self.low_pct} / {self.mid_pct} / {self.high_pct} / {self.crisis_pct}"
            )
        if not self.trend_weak < self.trend_strong:
            raise ValueError(
                f"trend_weak must be < trend_strong, got trend_weak={self.trend_weak}, trend_strong={self.trend_strong}"
            )
        if not self.vol_trend_recent < self.trend_window:
            raise ValueError(
                f"vol_trend_recent must be < trend_window (the rest of the window is the baseline), got "
                f"vol_trend_recent={self.vol_trend_recent}, trend_window={self.trend_window}"
            )
        return self


def warmup_bars(cfg: RegimeDetectorConfig | None = None) -> int:
    """Index of the first row at which every indicator is defined (for finite returns from row 0).

    vol needs `vol_window` returns and vol_pct then `pct_window` vols; vol_trend needs `trend_window` vols;
    trend_strength needs `trend_window` returns.
    """
    cfg = cfg or RegimeDetectorConfig()
    vol_first = cfg.vol_window - 1
    return max(vol_first + cfg.pct_window - 1, vol_first + cfg.trend_window - 1, cfg.trend_window - 1)


#: Warm-up of the default config (190 bars).
DEFAULT_WARMUP = warmup_bars()


@dataclass(frozen=True)
class RegimeResult:
    """Per-bar regimes with the indicators that produced them; rows < `warmup` are placeholders."""

    regime_ids: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float32 (n,), in [0.5, 0.95]
    warmup: int  # rows [0, warmup) have undefined indicators: LOW_VOL, confidence 0.5, to be dropped
    vol: np.ndarray  # float64 (n,), NaN in warm-up
    vol_pct: np.ndarray  # float64 (n,), NaN in warm-up
    trend_strength: np.ndarray  # float64 (n,), NaN in warm-up
    vol_trend: np.ndarray  # float64 (n,), NaN in warm-up

    def __len__(self) -> int:
        return len(self.regime_ids)


def _leaves(
    vol_pct: np.ndarray, trend: np.ndarray, vt: np.ndarray, cfg: RegimeDetectorConfig
) -> list[tuple[np.ndarray, Regime, np.ndarray]]:
    """The table's leaves as (mask, regime, scaled margin); the masks partition rows with finite vol_pct.

    A leaf's margin is the smallest distance, in units of the input's CONF_SCALE_*, between an input and a
    threshold it was compared with on the path to the leaf (both edges of its vol_pct band included).
    """
    pct_band = {
        "crisis": (vol_pct >= cfg.crisis_pct, (vol_pct - cfg.crisis_pct) / CONF_SCALE_PCT),
        "high": (
            (vol_pct >= cfg.high_pct) & (vol_pct < cfg.crisis_pct),
            np.minimum(vol_pct - cfg.high_pct, cfg.crisis_pct - vol_pct) / CONF_SCALE_PCT,
        ),
        "mid": (
            (vol_pct >= cfg.mid_pct) & (vol_pct < cfg.high_pct),
            np.minimum(vol_pct - cfg.mid_pct, cfg.high_pct - vol_pct) / CONF_SCALE_PCT,
        ),
        "low": (
            (vol_pct >= cfg.low_pct) & (vol_pct < cfg.mid_pct),
            np.minimum(vol_pct - cfg.low_pct, cfg.mid_pct - vol_pct) / CONF_SCALE_PCT,
        ),
        "calm": (vol_pct < cfg.low_pct, (cfg.low_pct - vol_pct) / CONF_SCALE_PCT),
    }
    strong, weak = trend >= cfg.trend_strong, trend >= cfg.trend_weak
    d_strong = np.abs(trend - cfg.trend_strong) / CONF_SCALE_TREND
    d_weak = np.abs(trend - cfg.trend_weak) / CONF_SCALE_TREND
    vt_mid, vt_low = vt > cfg.vol_trend_mid, vt > cfg.vol_trend_low
    d_vt_mid = np.abs(vt - cfg.vol_trend_mid) / CONF_SCALE_VOL_TREND
    d_vt_low = np.abs(vt - cfg.vol_trend_low) / CONF_SCALE_VOL_TREND

    m = np.minimum
    crisis, crisis_d = pct_band["crisis"]
    high, high_d = pct_band["high"]
    mid, mid_d = pct_band["mid"]
    low, low_d = pct_band["low"]
    calm, calm_d = pct_band["calm"]
    weak_only = weak & ~strong
    return [
        (crisis, Regime.CRISIS, crisis_d),
        (high & strong, Regime.TRENDING, m(high_d, d_strong)),
        (high & ~strong, Regime.HIGH_VOL, m(high_d, d_strong)),
        (mid & strong, Regime.TRENDING, m(mid_d, d_strong)),
        (mid & weak_only & vt_mid, Regime.HIGH_VOL, m(m(mid_d, m(d_strong, d_weak)), d_vt_mid)),
        (mid & weak_only & ~vt_mid, Regime.TRENDING, m(m(mid_d, m(d_strong, d_weak)), d_vt_mid)),
        (mid & ~weak & vt_low, Regime.HIGH_VOL, m(m(mid_d, d_weak), d_vt_low)),
        (mid & ~weak & ~vt_low, Regime.LOW_VOL, m(m(mid_d, d_weak), d_vt_low)),
        (low & weak, Regime.TRENDING, m(low_d, d_weak)),
        (low & ~weak, Regime.LOW_VOL, m(low_d, d_weak)),
        (calm, Regime.LOW_VOL, calm_d),
    ]


def _as_arrays(*xs: np.ndarray | float) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(x, dtype=np.float64) for x in np.broadcast_arrays(*xs))


def regime_decision(
    vol_pct: np.ndarray, trend: np.ndarray, vol_trend: np.ndarray, cfg: RegimeDetectorConfig | None = None
) -> np.ndarray:
    """The decision table of ARCHITECTURE §2.4, row by row (int64 Regime ids); NaN vol_pct falls to LOW_VOL."""
    cfg = cfg or RegimeDetectorConfig()
    vp, tr, vt = _as_arrays(vol_pct, trend, vol_trend)
    leaves = _leaves(vp, tr, vt, cfg)
    return np.select([mask for mask, _, _ in leaves], [int(reg) for _, reg, _ in leaves], int(Regime.LOW_VOL)).astype(
        np.int64
    )


def regime_confidence(
    vol_pct: np.ndarray, trend: np.ndarray, vol_trend: np.ndarray, cfg: RegimeDetectorConfig | None = None
) -> np.ndarray:
    """Confidence of `regime_decision`'s label: 0.5 + 0.45 * min(1, margin), float64 in [0.5, 0.95].

    margin is the smallest of the deciding inputs' distances to the thresholds on the leaf's path, each divided
    by its scale (CONF_SCALE_PCT=0.10 for vol_pct, CONF_SCALE_TREND=0.15 for trend_strength,
    CONF_SCALE_VOL_TREND=0.10 for vol_trend). So a row exactly at a threshold gets 0.5 (a nudge flips it) and
    one at least a full scale away from every threshold it was tested against gets 0.95; in between it grows
    linearly, monotone in each distance. Rows with NaN inputs get 0.5.
    """
    cfg = cfg or RegimeDetectorConfig()
    vp, tr, vt = _as_arrays(vol_pct, trend, vol_trend)
    leaves = _leaves(vp, tr, vt, cfg)
    margin = np.select([mask for mask, _, _ in leaves], [d for _, _, d in leaves], 0.0)
    margin = np.nan_to_num(margin, nan=0.0, posinf=1.0)
    return CONF_MIN + (CONF_MAX - CONF_MIN) * np.clip(margin, 0.0, 1.0)


def apply_min_dwell(raw: np.ndarray, min_dwell: int) -> np.ndarray:
    """Hysteresis: switch the output to a new regime only once the raw decision has held it `min_dwell` bars.

    Starts at raw[0] and looks back only. Every output run but the last therefore lasts >= min_dwell bars.
    """
    raw = np.asarray(raw, dtype=np.int64)
    if min_dwell <= 1 or len(raw) == 0:
        return raw.copy()
    # streak[t] = length of the run of equal raw values ending at t (vectorised), then one causal pass.
    idx = np.arange(len(raw))
    run_start = np.maximum.accumulate(np.where(np.r_[True, raw[1:] != raw[:-1]], idx, 0))
    streak = idx - run_start + 1
    out = np.empty_like(raw)
    current = raw[0]
    for t in range(len(raw)):
        if raw[t] != current and streak[t] >= min_dwell:
            current = raw[t]
        out[t] = current
    return out


def detect_regimes(returns: np.ndarray, cfg: RegimeDetectorConfig | None = None) -> RegimeResult:
    """Label every bar of `returns` (row t uses returns[:t+1] only).

    Leading NaNs (e.g. from `pct_change`) extend the warm-up; any other non-finite return is an error, since a
    silent gap would poison 24-168 bars of indicators.
    """
    cfg = cfg or RegimeDetectorConfig()
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"returns must be 1-D, got shape {r.shape}")
    n = len(r)
    finite = np.isfinite(r)
    lead = int(np.argmax(finite)) if finite.any() else n
    if not finite[lead:].all():
        bad = lead + int(np.argmin(finite[lead:]))
        raise ValueError(f"returns must be finite after any leading NaNs; row {bad} is {r[bad]}")

    body = r[lead:]
    vol = rolling_vol(body, cfg.vol_window)
    vol_pct = vol_percentile(vol, cfg.pct_window)
    trend = trend_strength(body, cfg.trend_window)
    vt = vol_trend(vol, cfg.trend_window, cfg.vol_trend_recent)

    warm = min(warmup_bars(cfg), len(body))
    indicators = []
    for x in (vol, vol_pct, trend, vt):
        x = x.copy()
        x[:warm] = np.nan
        indicators.append(np.r_[np.full(lead, np.nan), x])

    ids = np.full(n, int(Regime.LOW_VOL), dtype=np.int64)
    conf = np.full(n, CONF_MIN, dtype=np.float64)
    start = lead + warm
    if start < n:
        vp_, tr_, vt_ = (x[start:] for x in indicators[1:])
        raw = regime_decision(vp_, tr_, vt_, cfg)
        raw_conf = regime_confidence(vp_, tr_, vt_, cfg)
        held = apply_min_dwell(raw, cfg.min_dwell)
        ids[start:] = held
        # A held regime that the current inputs contradict is the least certain label there is.
        conf[start:] = np.where(held == raw, raw_conf, CONF_MIN)
    return RegimeResult(
        regime_ids=ids,
        confidences=conf.astype(np.float32),
        warmup=start,
        vol=indicators[0],
        vol_pct=indicators[1],
        trend_strength=indicators[2],
        vol_trend=indicators[3],
    )


def detect_regimes_real_bars(
    returns: np.ndarray, real: np.ndarray, cfg: RegimeDetectorConfig | None = None
) -> RegimeResult:
    """`detect_regimes` over the real bars of an hourly grid; filled bars take no part in any window.

    `returns[t]` is close[t] / close[t-1] - 1 on the grid. A filled bar repeats the previous close, so at a real
    bar the grid return is already the return since the previous *real* bar: the real bars' returns are
    `returns[real]`. Every output row of a filled bar is that of the last real bar at or before it (known at
    bar t, so still causal); `warmup` is the first grid row whose real-bar prefix is past the warm-up.
    """
    r = np.asarray(returns, dtype=np.float64)
    real = np.asarray(real, dtype=bool)
    if real.shape != r.shape:
        raise ValueError(f"real must match returns' shape {r.shape}, got {real.shape}")
    if len(r) and not real[0]:
        raise ValueError("the first bar of the grid must be a real bar")
    idx = np.flatnonzero(real)
    res = detect_regimes(r[idx], cfg)
    # Grid row -> position of the last real bar at or before it.
    last_real = np.cumsum(real) - 1
    warmup = int(idx[res.warmup]) if res.warmup < len(idx) else len(r)
    return RegimeResult(
        regime_ids=res.regime_ids[last_real],
        confidences=res.confidences[last_real],
        warmup=warmup,
        vol=res.vol[last_real],
        vol_pct=res.vol_pct[last_real],
        trend_strength=res.trend_strength[last_real],
        vol_trend=res.vol_trend[last_real],
    )


def regime_shares(regime_ids: np.ndarray) -> dict[str, float]:
    """Percent of rows in each regime, keyed by Regime name (every regime present, 0.0 when absent)."""
    ids = np.asarray(regime_ids, dtype=np.int64)
    counts = np.bincount(ids, minlength=len(Regime)) if len(ids) else np.zeros(len(Regime), dtype=np.int64)
    total = max(len(ids), 1)
    return {reg.name: 100.0 * float(counts[reg.value]) / total for reg in Regime}
