"""The release number, in one place (pyproject reads it; checkpoints record it in drop_config)."""

__version__ = "0.2.0.dev0"
