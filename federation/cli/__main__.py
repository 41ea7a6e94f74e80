"""``python -m federation.cli``: the same commands as the ``federation`` console script."""

from . import main

if __name__ == "__main__":  # pragma: no branch
    main(prog_name="federation")
