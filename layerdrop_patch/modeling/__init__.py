"""The skip implementation shared by the library and saved checkpoints (see modeling_layerdrop.py)."""

from pathlib import Path

MODELING_FILE = Path(__file__).with_name("modeling_layerdrop.py")
