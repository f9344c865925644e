"""Synthetic market (ARCHITECTURE §2.2) and the dataset contract (ARCHITECTURE §2.1) on it."""

from __future__ import annotations

import numpy as np
import pytest

from himari_ray.data.dataset import DataSpec
from himari_ray.data.synthetic import SYNTH_FEATURE_NAMES, SYNTH_REGIME_SHARES, synthetic_features, synthetic_frame
from himari_ray.types import FeatureScaler, Regime


@pytest.fixture(scope="module")
def big_frame():
    return synthetic_frame(60_000, seed=11)


def test_same_seed_same_market_other_seed_differs():
    a, b, c = synthetic_frame(2000, 5), synthetic_frame(2000, 5), synthetic_frame(2000, 6)
    assert a.equals(b)
    assert not np.allclose(a["ret"], c["ret"])


def test_dataset_contract_shapes_and_dtypes(small_dataset):
    ds = small_dataset
    for name in ("train", "val", "test"):
        s = ds.split(name)
        assert s.features.dtype == np.float32 and s.features.shape == (len(s), len(SYNTH_FEATURE_NAMES))
        assert np.isfinite(s.features).all()
        assert set(np.unique(s.regime_ids)) <= {r.value for r in Regime}
        assert ((s.regime_confidences >= 0.5) & (s.regime_confidences <= 0.95)).all()
        # returns[t] is the return of bar t: close_t / close_{t-1} - 1
        np.testing.assert_allclose(s.returns[1:], s.prices[1:] / s.prices[:-1] - 1, rtol=1e-9)
    # chronological, no overlap
    assert ds.train.timestamps[-1] < ds.val.timestamps[0] < ds.val.timestamps[-1] < ds.test.timestamps[0]
    assert len(ds.train) == int(0.6 * 3000)


def test_regime_shares_near_the_seed_with_persistence(big_frame):
    shares = np.bincount(big_frame["regime_id"], minlength=4) / len(big_frame)
    np.testing.assert_allclose(shares, SYNTH_REGIME_SHARES, atol=0.04)
    changes = np.flatnonzero(np.diff(big_frame["regime_id"].to_numpy()))
    assert np.mean(np.diff(changes)) > 24, "regimes should persist for days, not flip every bar"


def test_fat_tails_and_regime_specific_volatility(big_frame):
    r = big_frame["ret"].to_numpy()
    reg = big_frame["regime_id"].to_numpy()
    z = r / r.std()
    assert 0.45 < np.mean(np.abs(z)) < 0.7  # BTC hourly ~0.6; a Gaussian would give 0.8
    vols = [r[reg == k].std() for k in Regime]
    assert vols == sorted(vols), "LOW_VOL < TRENDING < HIGH_VOL < CRISIS volatility"
    kurt = np.mean(((r - r.mean()) / r.std()) ** 4)
    assert kurt > 5


def test_weak_but_real_predictability(big_frame):
    """A linear predictor fitted on the first 60% calls the next bar's direction a little better than
    a coin flip out of sample: like real BTC (~54%), far from a leak (>60%)."""
    x = big_frame[list(SYNTH_FEATURE_NAMES)].to_numpy()[:-1]
    x = np.c_[x, np.ones(len(x))]
    y = big_frame["ret"].to_numpy()[1:]
    n = int(0.6 * len(y))
    w, *_ = np.linalg.lstsq(x[:n], y[:n] / y[:n].std(), rcond=None)
    acc = np.mean(np.sign(x[n:] @ w) == np.sign(y[n:]))
    assert 0.515 < acc < 0.58


def test_features_are_causal():
    """Perturb every bar after t: every feature at bars <= t is bit-identical."""
    rng = np.random.default_rng(0)
    n, t = 400, 250
    returns = rng.standard_normal(n) * 0.01
    prices = 100 * np.cumprod(1 + returns)
    sig, noise = rng.standard_normal(n), rng.standard_normal(n)
    base = synthetic_features(prices, returns, sig, noise).to_numpy()
    r2 = returns.copy()
    r2[t + 1 :] = rng.standard_normal(n - t - 1) * 0.05
    p2 = np.r_[prices[: t + 1], prices[t] * np.cumprod(1 + r2[t + 1 :])]
    s2, n2 = sig.copy(), noise.copy()
    s2[t + 1 :] += 3.0
    n2[t + 1 :] -= 3.0
    other = synthetic_features(p2, r2, s2, n2).to_numpy()
    np.testing.assert_array_equal(base[: t + 1], other[: t + 1])
    assert not np.allclose(base[t + 1 :], other[t + 1 :], equal_nan=True)


def test_scaler_constant_column_maps_to_zero():
    x = np.c_[np.ones(10), np.arange(10.0)]
    z = FeatureScaler.fit(x).transform(x)
    assert np.all(z[:, 0] == 0) and np.isfinite(z).all()


def test_spec_rejects_no_test_split_and_misplaced_paths():
    with pytest.raises(ValueError, match="train_frac"):
        DataSpec(train_frac=0.7, val_frac=0.3)
    with pytest.raises(ValueError, match="path is required"):
        DataSpec(source="dataset")
    with pytest.raises(ValueError, match="path is required"):
        DataSpec(source="synthetic", path="x")
