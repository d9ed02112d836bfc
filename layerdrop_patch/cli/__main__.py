"""`python -m layerdrop_patch.cli` runs the `layerdrop` command line."""

from layerdrop_patch.cli import app

if __name__ == "__main__":
    app()
