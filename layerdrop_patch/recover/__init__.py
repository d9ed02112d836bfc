"""Recovery: win back quality after a drop with a short LoRA fine-tune (merged, or kept as an adapter).

    RecoveryConfig, recover_lora, RecoveryResult, lora_target_modules, plot_loss_curve
"""

from layerdrop_patch.recover.lora import RecoveryConfig, RecoveryResult, lora_target_modules, recover_lora
from layerdrop_patch.recover.plots import plot_loss_curve

__all__ = ["RecoveryConfig", "RecoveryResult", "lora_target_modules", "recover_lora", "plot_loss_curve"]
