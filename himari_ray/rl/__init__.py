"""Layer 3, reinforcement learning: the transformer RLModule, typed trial configs turned into RLlib's, greedy evaluation and the Tune trainable."""
