"""Regenerate the parts of the documentation that are read from the method registry.

    python docs/generate.py

rewrites the README's method table (between its markers); `tests/test_registry.py` fails
while it is stale.
"""

from __future__ import annotations

from pathlib import Path

from camegrad_jax import _registry

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    readme = ROOT / "README.md"
    readme.write_text(_registry.readme_with_table(readme.read_text()))


if __name__ == "__main__":
    main()
