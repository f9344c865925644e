"""himari-ray: distributed reward-shaping search for a regime-conditioned PPO trading policy."""

__version__ = "0.1.0"
