"""Weight sync between the learner and rollout workers: bucket wire format, sync plans, sender."""
