"""rls3: RL-based synthetic sample selection for spatial reasoning in vision-language models."""

__version__ = "0.1.0"
