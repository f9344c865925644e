"""himari-ray: distributed reward-shaping search for a regime-conditioned PPO trading policy."""

from importlib.metadata import PackageNotFoundError, version

from gymnasium.envs.registration import register, registry

try:  # one source for the version: pyproject.toml, as installed
    __version__ = version("himari-ray")
except PackageNotFoundError:  # run from a source tree on PYTHONPATH, never installed
    __version__ = "0+unknown"

#: The trading env's gymnasium id: `gym.make(ENV_ID, config={...})` after `import himari_ray`, with `config` an
#: `EnvConfig` or its dict form (see `himari_ray.env.trading.HimariTradingEnv`).
ENV_ID = "himari_ray/Trading-v0"

# gymnasium 1.x loads no plugin entry points, so importing the package is what registers the env. The entry
# point is a string: the env module (and the dataset code behind it) is imported only by `gym.make`.
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="himari_ray.env.trading:HimariTradingEnv")
