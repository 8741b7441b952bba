"""``python -m region_perception.cli`` (and ``torchrun -m`` / ``accelerate launch -m``)."""

from .commands import main

if __name__ == "__main__":
    raise SystemExit(main())
