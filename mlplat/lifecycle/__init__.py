"""Model lifecycle: the decisions that move a version between states (safe rollout, canary)."""
