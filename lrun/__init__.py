"""lrun: train muscle-driven running agents (NIPS 2017 Learning to Run) with PPO over MPI."""

__version__ = "0.1.0"
