"""The layout rule (docs/design.md, "Layout"), read off the source with `ast`: no import cycle in annotate/, model/,
pipelines/ (imports inside functions count: they run too); every stage of the chain is `annotate/<name>.py` or the
package `annotate/<name>/`; no `annotate/<stage>_*.py` beside them; no `_private` name imported from another
module; every module of a package named in its `__init__`'s docstring map."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("annotate", "model", "pipelines")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, wherever it stands."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    out.append((sub, [], node.lineno))  # a submodule taken by name
                elif base in known:
                    out.append((base, [a.name], node.lineno))
    return out


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    edges = {m: set() for m in known}
    for m, path in known.items():
        for target, _, _ in imports(path, m, known):
            if target != m:
                edges[m].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def private_imports(known: dict[str, Path]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: {target}.{n}"
            for m, path in known.items() for target, names, line in imports(path, m, known)
            for n in names if n.startswith("_") and not n.startswith("__") and target != m]


def unmapped(known: dict[str, Path]) -> list[str]:
    """Modules (and subpackages) of a package that its __init__ docstring does not name (`x`, `x.py`, `x/`)."""
    missing = []
    for m, path in known.items():
        if path.name != "__init__.py" or m in PACKAGES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        for child in sorted(path.parent.iterdir()):
            if child.name.startswith(("_", ".")) or child.name == "__main__.py":
                continue
            named = re.search(rf"`{re.escape(child.stem)}(\.py|/)?`|\b{re.escape(child.name)}\b", doc)
            if child.suffix == ".py" and not named:
                missing.append(f"{path.relative_to(ROOT)} does not name {child.name}")
            elif child.is_dir() and (child / "__init__.py").exists() and not named:
                missing.append(f"{path.relative_to(ROOT)} does not name {child.name}/")
    return missing


def test_no_import_cycle():
    found = cycles(graph(modules()))
    assert found == [], "import cycles (function-level imports counted): " + "; ".join(" <-> ".join(c) for c in found)


def test_every_stage_is_a_module_or_a_package_and_nothing_beside_it():
    from annotate.pipeline import STAGE_NAMES

    for name in STAGE_NAMES:
        assert (ROOT / "annotate" / f"{name}.py").is_file() != (ROOT / "annotate" / name / "__init__.py").is_file(), \
            f"stage {name}: expected annotate/{name}.py or annotate/{name}/__init__.py (one of them)"
    stray = [p.name for p in (ROOT / "annotate").glob("*.py")
             if re.match(rf"({'|'.join(STAGE_NAMES)})_\w+\.py$", p.name)]
    assert stray == [], f"a stage's module belongs in its package (annotate/<stage>/<backend>.py): {stray}"


def test_no_module_is_named_like_a_builtin():
    """A submodule becomes an attribute of its package once imported: `annotate/decode/open.py` made every `open(...)`
    in `annotate/decode/__init__.py` call the module."""
    import builtins

    clash = [m for m in modules() if m.rsplit(".", 1)[-1] in dir(builtins)]
    assert clash == [], f"modules named like a builtin (they shadow it in their package's __init__): {clash}"


def test_no_private_name_is_imported_from_another_module():
    assert private_imports(modules()) == []


def test_every_package_maps_its_modules():
    assert unmapped(modules()) == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A cycle, a private import and an unmapped module, written into a copy of a tiny tree, are all found."""
    pkg = tmp_path / "annotate"
    (pkg / "ground").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""`a.py`"""\n')
    (pkg / "a.py").write_text("def f():\n    from annotate.b import _g\n")
    (pkg / "b.py").write_text("from annotate import a\n\ndef _g():\n    pass\n")
    (pkg / "ground" / "__init__.py").write_text('"""the face; names `base.py` only"""\n')
    (pkg / "ground" / "base.py").write_text("")
    (pkg / "ground" / "extra.py").write_text("")
    for other in PACKAGES[1:]:
        (tmp_path / other).mkdir()
    known = {m: p for m, p in modules(tmp_path).items()}
    assert cycles(graph(known)) == [["annotate.a", "annotate.b"]]
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert private_imports(known) == ["annotate/a.py:2: annotate.b._g"]
        assert unmapped(known) == ["annotate/ground/__init__.py does not name extra.py"]
    finally:
        ROOT = saved
