"""Publishing: push a pruned checkpoint to the Hugging Face Hub with a generated model card.

    push_to_hub, validate_checkpoint_dir, render_model_card, write_model_card
"""

from layerdrop_patch.publish.hub import NotALayerdropCheckpointError, push_to_hub, validate_checkpoint_dir
from layerdrop_patch.publish.model_card import render_model_card, write_model_card

__all__ = ["NotALayerdropCheckpointError", "push_to_hub", "validate_checkpoint_dir", "render_model_card",
           "write_model_card"]
