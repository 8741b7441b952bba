"""``region-perception``, the command line (``python -m region_perception.cli``, the console script).

Nothing is imported here until :func:`main` runs, so ``region_perception.cli.common`` (what the
sub-commands and the ROS query tool share) comes without the parser and its sub-commands.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status."""
    from .commands import main as run

    return run(argv)
