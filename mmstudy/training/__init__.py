"""Trainers: staged base training, preference losses, offline and online DPO, the reward model and RLOO, the
shift of an aligned model from its base, and the checkpoint plumbing they share."""
