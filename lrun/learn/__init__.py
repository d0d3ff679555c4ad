"""The learning maths: policy networks, GAE, PPO, observation normalisation (no mpi4py, no opensim)."""
