"""The skip implementation shared by the library and saved checkpoints (see modeling_layerdrop.py).

Both files are shipped verbatim next to the weights of every pruned checkpoint (transformers copies them when
it saves a model whose classes are these) and are the only code such a checkpoint asks users to trust.
"""

from pathlib import Path

MODELING_FILE = Path(__file__).with_name("modeling_layerdrop.py")
CONFIGURATION_FILE = Path(__file__).with_name("configuration_layerdrop.py")
SHIPPED_FILES = (MODELING_FILE, CONFIGURATION_FILE)
