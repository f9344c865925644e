"""What the feature tests share: a bar frame from a close (open, high and low the close, volume 1, unless
given), and the square root of the hours in a year (volatilities are annualised)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SQRT_YEAR = math.sqrt(8760)


def frame(close, open_=None, high=None, low=None, volume=None) -> pd.DataFrame:
    close = np.asarray(close, dtype=np.float64)
    return pd.DataFrame(
        {
            "open": close if open_ is None else np.asarray(open_, dtype=np.float64),
            "high": close if high is None else np.asarray(high, dtype=np.float64),
            "low": close if low is None else np.asarray(low, dtype=np.float64),
            "close": close,
            "volume": np.ones_like(close) if volume is None else np.asarray(volume, dtype=np.float64),
        }
    )
