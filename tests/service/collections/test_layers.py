"""The collections package stands in one-way layers (docs/architecture.md, "service/collections/"):
a module may import only modules of lower layers, so following a name never loops back."""

from __future__ import annotations

import ast
from pathlib import Path

import service.collections as pkg

# Lower number = lower layer. Modules in one layer may not import each other.
LAYERS = {
    "errors": 0,
    "files": 1,
    "binding": 2,
    "partitions": 3,
    "filters": 3,
    "vectors": 3,
    "fitted": 3,
    "collection": 4,
    "store": 5,
    "jobs": 6,
    "migrate": 6,
    "fitting": 6,
    "transfer": 6,
    "schemas": 6,
    "checks": 7,
    "routes": 8,
    "cli": 8,
    "__init__": 9,
}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service.collections"):
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 2 else {parts[2]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("service.collections.")}
    return found


def test_every_module_has_a_layer_and_imports_only_below_it() -> None:
    root = Path(pkg.__file__).parent
    for path in sorted(root.glob("*.py")):
        assert path.stem in LAYERS, f"{path.name} has no layer in this test: place it"
        for dep in imports_of(path):
            assert LAYERS[dep] < LAYERS[path.stem], f"{path.name} imports {dep}, which is not below it"
