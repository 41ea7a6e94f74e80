"""``python -m federation``: the same commands as the ``federation`` console script."""

from .cli import main

if __name__ == "__main__":  # pragma: no branch
    main(prog_name="federation")
