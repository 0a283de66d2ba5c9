"""Exit 1 and name the modules when an import cycle is left in app/ (module level, function-local imports
included); import-linter's acyclic_siblings contract watches packages, this watches modules.

Usage: .venv/bin/python scripts/import_cycles.py [PACKAGE]   (scripts/lint.sh runs it)
"""

from __future__ import annotations

import sys
from graphlib import CycleError, TopologicalSorter

import grimp


def find_cycle(package: str) -> list[str] | None:
    """One import cycle among the modules of `package` (first module repeated last), or None."""
    graph = grimp.build_graph(package, cache_dir=None)
    order = TopologicalSorter({module: graph.find_modules_directly_imported_by(module) for module in graph.modules})
    try:
        order.prepare()
    except CycleError as exc:
        return list(reversed(exc.args[1]))
    return None


def main() -> int:
    package = sys.argv[1] if len(sys.argv) > 1 else "app"
    cycle = find_cycle(package)
    if cycle is None:
        return 0
    print(f"Import cycle in {package}: {' -> '.join(cycle)}", file=sys.stderr)  # noqa: T201
    return 1


if __name__ == "__main__":
    sys.exit(main())
