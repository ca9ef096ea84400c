"""Stage 2: Visual-Latent Policy Optimization (VLPO) and the GRPO variants (docs/method.md §4-5).

algos (pure loss math) · rewards (accuracy + format by token id) · data (prompts, synthetic set, sampler) ·
rollout (RolloutEngine seam on latent_generate) · core (collect / micro-batch loss) · config (YAML) ·
trainer (the recipe on training.engine; `medlvr train-vlpo`).
"""
