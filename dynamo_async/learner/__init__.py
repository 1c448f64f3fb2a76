"""The learner: turns buffer batches into modulated, clipped GRPO updates and new weights."""
