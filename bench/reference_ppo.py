"""A minimal pure-torch PPO on the same module, data, batch, epochs, clipped objective and GAE as RLlib's: the
practical limit `bench_ppo.py` measures RLlib against (issue 11). Used from bench_ppo.py; not a tool.
"""

from __future__ import annotations

import time

import numpy as np


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_module(trial, device):
    from himari_ray.env.trading import HimariTradingEnv
    from himari_ray.rl.config import build_ppo_config

    env = HimariTradingEnv(trial.env)
    spec = build_ppo_config(trial).rl_module_spec
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    return spec.build().to(device), env


def reference_ppo(trial, device):
    """Pure-torch PPO, the practical limit: N lanes over the env's tables, sampled with one forward for the
    whole batch in `per_bar` mode and one batched forward per step in `carried` mode (actor and critic from
    one encoding), GAE(gamma, lambda) with bootstrap at truncation,
    then `num_epochs` passes of shuffled minibatches of RLlib's PPO loss: clipped surrogate, KL penalty
    (coefficient 0.2), value loss clipped at 10, entropy bonus, advantages standardised over the batch."""
    import torch
    from ray.rllib.core.columns import Columns

    from himari_ray.rl.fast_runner import FORWARD_WINDOWS
    from himari_ray.rl.tables import EnvTables, gather_observations

    t = trial.train
    torch.manual_seed(t.seed)
    module, env = build_module(trial, device)
    tables = EnvTables.of(env)
    dev_obs = tables.obs.to(device)
    opt = torch.optim.Adam(module.parameters(), lr=t.lr, fused=True)  # as rl/learner.py
    rng = np.random.default_rng(t.seed)
    n = t.num_envs_per_env_runner
    steps = -(-t.train_batch_size // n)
    latest = env.last_bar - env.episode_len + 1
    bar = rng.integers(env.first_bar, latest + 1, n)
    end = bar + env.episode_len - 1
    prev = np.zeros(n, dtype=np.int64)

    compiled = torch.compile(module._encode) if t.compile else module._encode

    def encode(bars: torch.Tensor, prevs: torch.Tensor, train: bool = False):
        batch = {Columns.OBS: gather_observations(dev_obs, bars, prevs)}
        emb = (compiled if train else module._encode)(batch)  # as RLlib: only the learner's forward is compiled
        return module._head(module.actor, emb), module._head(module.critic, emb).squeeze(-1)

    def sample_in_lockstep(B, P, A, R, D, LP, V, VN, LOGITS):
        """`carried`: the observation shows the previous action, so the lanes step one bar at a time."""
        nonlocal bar, end, prev
        for s in range(steps):
            logits, v = encode(torch.as_tensor(bar, device=device), torch.as_tensor(prev, device=device))
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            LP[s], V[s], LOGITS[s] = dist.log_prob(a), v, logits
            an = a.cpu().numpy()
            B[s], P[s], A[s] = bar, prev, an
            R[s] = tables.reward[bar, prev, an]
            D[s] = bar >= end
            prev, bar = an.copy(), bar + 1
            if D[s].any():  # bootstrap value of the final observation, then a fresh random start
                idx = np.flatnonzero(D[s])
                _, vn = encode(torch.as_tensor(bar[idx], device=device), torch.as_tensor(prev[idx], device=device))
                VN[s, idx] = vn
                bar[idx] = rng.integers(env.first_bar, latest + 1, len(idx))
                end[idx], prev[idx] = bar[idx] + env.episode_len - 1, 0
        return encode(torch.as_tensor(bar, device=device), torch.as_tensor(prev, device=device))[1]

    def sample_at_once(B, P, A, R, D, LP, V, VN, LOGITS):
        """`per_bar`: no observation depends on an action, so the bars are laid out first and every window
        (and each truncated episode's bootstrap window) goes through the module in one forward, as the fast
        runner does."""
        nonlocal bar, end, prev
        final = np.zeros((steps, n), dtype=np.int64)  # the bar after a truncated episode's last decision
        for s in range(steps):
            B[s], D[s] = bar, bar >= end
            bar = bar + 1
            idx = np.flatnonzero(D[s])
            final[s, idx] = bar[idx]
            bar[idx] = rng.integers(env.first_bar, latest + 1, len(idx))
            end[idx] = bar[idx] + env.episode_len - 1
        extra = np.concatenate([final[D], bar])  # bootstrap windows, then where each lane stands now
        all_bars = torch.as_tensor(np.concatenate([B.reshape(-1), extra]), device=device)
        parts = [encode(c, torch.zeros_like(c)) for c in all_bars.split(FORWARD_WINDOWS)]  # the fast runner's chunks
        logits, v = torch.cat([lg for lg, _ in parts]), torch.cat([vv for _, vv in parts])
        k = steps * n
        dist = torch.distributions.Categorical(logits=logits[:k])
        a = dist.sample()
        LP[:], V[:], LOGITS[:] = dist.log_prob(a).view(steps, n), v[:k].view(steps, n), logits[:k].view(steps, n, 3)
        VN[torch.as_tensor(D, device=device)] = v[k : k + int(D.sum())]
        A[:] = a.view(steps, n).cpu().numpy()
        P[0], P[1:] = prev, A[:-1]
        P[1:][D[:-1]] = 0  # an episode starts flat
        R[:] = tables.reward[B, P, A]
        prev = np.where(D[-1], 0, A[-1])
        return v[k + int(D.sum()) :]

    def iteration() -> None:
        B, P, A = (np.empty((steps, n), dtype=np.int64) for _ in range(3))
        R, D = np.empty((steps, n)), np.zeros((steps, n), dtype=bool)
        LP, V, VN = (torch.empty(steps, n, device=device) for _ in range(3))
        LOGITS = torch.empty(steps, n, 3, device=device)
        module.eval()
        with torch.no_grad():
            sample = sample_at_once if trial.env.position_mode == "per_bar" else sample_in_lockstep
            v_last = sample(B, P, A, R, D, LP, V, VN, LOGITS)
        done = torch.as_tensor(D, device=device)
        v_next = torch.cat([V[1:], v_last[None]])
        v_next = torch.where(done, VN, v_next)
        rew = torch.as_tensor(R, device=device, dtype=torch.float32)
        delta = rew + trial.gamma * v_next - V
        adv = torch.zeros_like(delta)
        acc = torch.zeros(n, device=device)
        for s in reversed(range(steps)):
            acc = delta[s] + trial.gamma * t.lambda_ * (~done[s]) * acc
            adv[s] = acc
        targets = (adv + V).flatten()
        adv = adv.flatten()
        adv = (adv - adv.mean()) / adv.std().clamp_min(1e-4)
        bars_t = torch.as_tensor(B, device=device).flatten()
        prevs_t = torch.as_tensor(P, device=device).flatten()
        acts = torch.as_tensor(A, device=device).flatten()
        old_lp, old_logits = LP.flatten(), LOGITS.reshape(-1, 3)
        module.train()
        total = steps * n
        for _ in range(t.num_epochs):
            perm = torch.randperm(total, device=device)
            for i in range(0, total, t.minibatch_size):
                mb = perm[i : i + t.minibatch_size]
                logits, v = encode(bars_t[mb], prevs_t[mb], train=True)
                dist = torch.distributions.Categorical(logits=logits)
                ratio = torch.exp(dist.log_prob(acts[mb]) - old_lp[mb])
                surr = torch.min(adv[mb] * ratio, adv[mb] * ratio.clamp(1 - t.clip_param, 1 + t.clip_param))
                kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=old_logits[mb]), dist)
                vf = (v - targets[mb]).square().clamp(0, 10.0)
                loss = (-surr + vf - t.entropy_coeff * dist.entropy()).mean() + 0.2 * kl.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

    iteration()  # warm-up

    class ReferenceRun:
        label = "reference"

        def step(self) -> tuple[int, float]:
            sync(device)
            t0 = time.perf_counter()
            iteration()
            sync(device)
            return steps * n, time.perf_counter() - t0

        def describe(self, rate: float, wall: float, iterations: int, gpu_gb: float) -> str:
            return (
                f"pure-torch PPO reference, {n} lanes: {rate:,.0f} env steps/s ({wall / iterations:.2f} s/iteration; "
                f"peak GPU {gpu_gb:.2f} GB)"
            )

        def close(self) -> None:
            pass

    return ReferenceRun()
