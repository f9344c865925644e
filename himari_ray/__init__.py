"""himari-ray: distributed reward-shaping search for a regime-conditioned PPO trading policy."""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

#: The trading env's gymnasium id: `gym.make(ENV_ID, config={...})` after `import himari_ray`, with `config` an
#: `EnvConfig` or its dict form (see `himari_ray.env.trading.HimariTradingEnv`).
ENV_ID = "himari_ray/Trading-v0"

# gymnasium 1.x loads no plugin entry points, so importing the package is what registers the env. The entry
# point is a string: the env module (and the dataset code behind it) is imported only by `gym.make`.
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="himari_ray.env.trading:HimariTradingEnv")
