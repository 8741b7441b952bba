"""Command-line interface (filled in by the engine issue)."""


def main() -> int:
    return 0
