"""The regime-conditioned transformer policy (ARCHITECTURE §4) as an RLlib `TorchRLModule`.

Built from the observation/action spaces and `model_config` only; it never imports the environment.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override
from torch import nn

from himari_ray.types import StrictModel


class ModelConfig(StrictModel):
    """Sizes of the transformer; `to_model_config()` is what RLlib passes to the module."""

    d_model: int = Field(256, ge=4, description="Width of the feature projection, regime embedding and encoder.")
    n_heads: int = Field(4, ge=1, description="Attention heads per encoder layer.")
    n_layers: int = Field(3, ge=1, description="TransformerEncoder layers.")
    ffn_dim: int = Field(1024, ge=4, description="Hidden width of each encoder layer's feed-forward block.")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout inside the encoder; inert under PPO (sampling and loss both run it off, see the module).",
    )
    head_hidden: int = Field(256, ge=1, description="Hidden width of the actor and critic heads.")

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        return self

    def to_model_config(self) -> dict[str, Any]:
        return self.model_dump()


#: `production` is the seed's size (~2.67M parameters at F=44, C=100); `tiny` is for CPU tests and laptops.
#: The seed's production dropout was 0.1; PPO here runs without it (see `RegimeTransformerModule.train`).
MODEL_PRESETS: dict[str, ModelConfig] = {
    "production": ModelConfig(),
    "tiny": ModelConfig(d_model=32, n_heads=2, n_layers=1, ffn_dim=64, dropout=0.0, head_hidden=32),
}

#: Key of `model_config` (set by `rl.config.build_ppo_config`) naming the precision of the forward pass.
PRECISION_KEY = "precision"

#: Windows per chunk when values are computed for targets (GAE) rather than for the loss.
VALUE_CHUNK = 1024


class RegimeTransformerModule(TorchRLModule, ValueFunctionAPI):
    """Feature projection F->d plus regime embedding and learned positions -> TransformerEncoder ->
    concat(last token, mean over tokens) -> actor (2d->h->3) and critic (2d->h->1).

    Expects observations `{"window": (B, C, F) float, "regime": (B,) int}` and, when the observation space has
    it, `"position": (B,) int` (the previous action in `carried` mode), embedded like the regime.
    """

    @override(TorchRLModule)
    def setup(self) -> None:
        cfg = ModelConfig.model_validate({k: v for k, v in self.model_config.items() if k in ModelConfig.model_fields})
        window_space = self.observation_space["window"]
        context_len, n_features = window_space.shape
        n_regimes = self.observation_space["regime"].n
        d = cfg.d_model

        self.feature_proj = nn.Linear(n_features, d)
        self.regime_embedding = nn.Embedding(n_regimes, d)
        # Carried mode's reward depends on the position held; the policy must see it (issue 8).
        position_space = self.observation_space.spaces.get("position")
        self.position_embedding = nn.Embedding(position_space.n, d) if position_space is not None else None
        self.positional = nn.Parameter(torch.zeros(context_len, d))
        nn.init.normal_(self.positional, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.n_heads,
            dim_feedforward=cfg.ffn_dim,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,  # pre-norm trains stably under PPO's noisy, shifting targets
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.n_layers, enable_nested_tensor=False)
        self.actor = nn.Sequential(nn.Linear(2 * d, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, 3))
        # The critic exists on inference-only copies too: weight sync then needs no key filtering.
        self.critic = nn.Sequential(nn.Linear(2 * d, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, 1))
        # A near-uniform initial policy: PPO should discover HOLD/LONG/SHORT preferences, not inherit them.
        nn.init.normal_(self.actor[-1].weight, std=0.01)
        nn.init.zeros_(self.actor[-1].bias)
        # bf16 autocast on CUDA only (CPU autocast is slow and changes results for nothing).
        self._bf16 = self.model_config.get(PRECISION_KEY, "fp32") == "bf16"

    def train(self, mode: bool = True) -> RegimeTransformerModule:
        """PPO's ratio pi_theta/pi_old is 1 at theta_old only if the loss evaluates the very function that
        sampled the actions. RLlib samples in eval mode (dropout off) and computes the loss in train mode, so
        any dropout made 5-14% of ratios leave the clip range before the first update (issue 11). Both
        phases therefore run with dropout off: the encoder (the only part with dropout, in its feed-forward
        blocks and inside attention) stays in eval mode whatever `mode` is; gradients flow the same."""
        super().train(mode)
        self.encoder.train(False)
        return self

    def _autocast(self, device: torch.device):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._bf16 and device.type == "cuda")

    def _encode(self, batch: dict[str, Any]) -> torch.Tensor:
        """Shared encoder of every forward pass: (B, 2d) embeddings."""
        obs = batch[Columns.OBS]
        window = obs["window"].float()
        regime = obs["regime"].long().reshape(-1)
        with self._autocast(window.device):
            h = self.feature_proj(window) + self.positional + self.regime_embedding(regime)[:, None, :]
            if self.position_embedding is not None:
                h = h + self.position_embedding(obs["position"].long().reshape(-1))[:, None, :]
            h = self.encoder(h)
            return torch.cat([h[:, -1], h.mean(dim=1)], dim=-1)

    def _head(self, head: nn.Module, emb: torch.Tensor) -> torch.Tensor:
        with self._autocast(emb.device):
            return head(emb).float()  # logits and values leave the module in fp32 whatever ran inside

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self._head(self.actor, self._encode(batch))}

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        emb = self._encode(batch)
        # Embeddings go along so PPO's value pass reuses them instead of encoding twice.
        return {Columns.ACTION_DIST_INPUTS: self._head(self.actor, emb), Columns.EMBEDDINGS: emb}

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        if embeddings is not None:  # the loss: gradients flow through the shared embeddings
            return self._head(self.critic, embeddings).squeeze(-1)
        # Without embeddings the caller wants value *targets* (RLlib's GAE connector, evaluation): it runs
        # over the whole train batch with autograd on, which kept the graph of 4096+ windows alive (~24 GB
        # of GPU memory per production trial, issue 11). Targets need no gradient: no graph, in chunks.
        obs = batch[Columns.OBS]
        n = obs["window"].shape[0]
        with torch.no_grad():
            out = [
                self._head(
                    self.critic, self._encode({Columns.OBS: {k: v[i : i + VALUE_CHUNK] for k, v in obs.items()}})
                ).squeeze(-1)
                for i in range(0, n, VALUE_CHUNK)
            ]
        return torch.cat(out) if out else torch.zeros(0, device=obs["window"].device)
