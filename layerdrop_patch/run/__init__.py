"""Running whole jobs: the pipeline steps the CLI shares, typed YAML recipes that resume, and the demo.

    Recipe, load_recipe, run_recipe     a run described in YAML, executed step by step, resumable
    pipeline                            score / choose / drop+save / sweep, shared by CLI, recipes and demo
    DemoConfig, run_demo                the end-to-end story on the embedded model
"""

from layerdrop_patch.run.demo import DemoConfig, Reporter, run_demo
from layerdrop_patch.run.recipe import Recipe, load_recipe
from layerdrop_patch.run.runner import plan_steps, run_recipe

__all__ = ["DemoConfig", "Reporter", "run_demo", "Recipe", "load_recipe", "plan_steps", "run_recipe"]
