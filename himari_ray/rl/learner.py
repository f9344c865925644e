"""RLlib's PPO torch learner with three changes: applying gradients never waits for the GPU, Adam is torch's
fused implementation, and `torch_compile_learner` compiles the module.

RLlib's `TorchLearner.apply_gradients` (torch_skip_nan_gradients=False, its default) asks, for every
parameter tensor, `torch.isfinite(grad).all()` in a Python `if`, then asks it again for every tensor before
`optimizer.step()`: each is a GPU->CPU synchronisation, about a hundred per minibatch update for the
production module (48 tensors). On a GPU the host then stalls until the queue drains instead of queueing the
next minibatch (issue 11, bench/README.md). The result of RLlib's default path is kept, without asking:
non-finite gradient entries become finite (`nan_to_num`, what RLlib does after its check) and the optimizer
steps. The loss, GAE, minibatching, KL adaptation and metrics are RLlib's, untouched.

RLlib builds `torch.optim.Adam(params)`, whose default on CPU is a Python loop over the parameter tensors and
on CUDA a few kernels per group of tensors. The fused implementation is the same update in one pass per
device: 0.16 against 0.84 ms per step for the tiny module on CPU, 2.3 against 10.8 ms for the production one
(bench/README.md); on a GPU it removes most of the optimizer's kernel launches.

RLlib 2.60's `TorchLearner.build` compiles a MultiRLModule's sub-modules only `if isinstance(self._module,
TorchRLModule)`: it tests the container, not the sub-module, so on the new API stack (where the learner
always holds a MultiRLModule) `torch_compile_learner=True` compiled nothing. `build` here compiles each torch
sub-module as RLlib meant to (its `compile_wrapper`: the forward passes, with the configured backend and mode).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import ModuleID, ParamDict


class HimariPPOLearner(PPOTorchLearner):
    """`PPOTorchLearner` whose `apply_gradients` queues its work without a host-device synchronisation and
    whose forward passes are compiled when the config asks for it."""

    @override(PPOTorchLearner)
    def build(self) -> None:
        super().build()
        if self._torch_compile_forward_train and not self._torch_compile_complete_update:
            for module in self.module.values():
                if isinstance(module, TorchRLModule) and not is_compiled(module._forward_train):
                    module.compile(self._torch_compile_cfg)

    @override(PPOTorchLearner)
    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        # As RLlib's default (Adam; its lr is set by RLlib's scheduler from config.lr), fused.
        params = self.get_parameters(self._module[module_id])
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(params, fused=True),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    @override(PPOTorchLearner)
    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        # Schedulers and AMP grad scalers have their own stepping logic: leave those setups to RLlib.
        if self._lr_scheduler_classes is not None or self._grad_scalers is not None:
            return super().apply_gradients(gradients_dict)
        for pid, grad in gradients_dict.items():
            self._params[pid].grad = torch.nan_to_num_(grad) if grad is not None else None
        for module_id, names in self._module_optimizers.items():
            for name in names:
                self.get_optimizer(module_id, name).step()
        return None


def is_compiled(fn: object) -> bool:
    """Whether `fn` is what `torch.compile` returns for a function or method."""
    return hasattr(fn, "_torchdynamo_orig_callable")
