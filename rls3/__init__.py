"""rls3: RL-based synthetic sample selection for spatial reasoning in vision-language models."""

__version__ = "0.1.0"

#: the gymnasium id of `rls3.env.Rls3Env`: `gymnasium.make(ENV_ID, scenes=[...], t0=..., ...)`
ENV_ID = "rls3/ArrangeObjects-v0"


def _register_env() -> None:
    """Register ENV_ID with gymnasium on `import rls3` (the env module loads only on make)."""
    from gymnasium.envs.registration import register, registry

    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="rls3.env:make_env")


_register_env()
