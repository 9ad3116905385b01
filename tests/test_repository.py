"""The shape of the repository: small modules, imports that only go down the layers, no import cycle, no words
about how the work was organised, and every file or doc anchor that the code and docs cite exists."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "boltzdiff"

#: the longest a module may grow before it is split
MAX_LINES = 500

#: what each low layer may never import, module-level or inside a function (the wiring layers sit above)
FORBIDDEN = {
    "targets": {"systems", "models", "samplers", "analysis", "pipeline", "commands", "train", "reference", "config"},
    "noise": {"targets", "models", "samplers", "analysis", "pipeline", "commands", "train", "systems", "config"},
    "geometry": {"targets", "models", "samplers", "analysis", "pipeline", "commands", "train", "systems"},
    "models": {"samplers", "analysis", "pipeline", "commands", "train", "systems", "reference", "config"},
    "losses": {"samplers", "analysis", "pipeline", "commands", "train", "systems", "reference", "config"},
    "samplers": {"analysis", "pipeline", "commands", "train", "systems", "reference", "config"},
    "analysis": {"pipeline", "commands", "train", "systems", "reference", "config", "models"},
    "reference": {"pipeline", "commands", "train", "analysis"},
    "systems": {"pipeline", "commands", "train", "models", "samplers", "reference"},
}
#: the one sanctioned upward reference: ``boltzdiff.targets.from_openmm``, resolved lazily by the targets
#: package's module ``__getattr__`` (the function itself lives in systems)
ALLOWED = {("boltzdiff.targets", "boltzdiff.systems")}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # also imports under `if TYPE_CHECKING:`-free top-level try/if blocks
        nodes = [n for top in tree.body for n in ast.walk(top) if not isinstance(top, ast.FunctionDef | ast.ClassDef)]
    out = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module and n.module.startswith("boltzdiff"):
            out.add(n.module)
            out.update(f"{n.module}.{a.name}" for a in n.names)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names if a.name.startswith("boltzdiff"))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_is_over_the_size_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_low_layers_never_import_upward():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        layer = _layer(name)
        for dep in _imports(path, module_level_only=False):
            dep_mod = dep if dep in mods else dep.rsplit(".", 1)[0]
            if (_layer(name) and _layer(dep_mod) in FORBIDDEN.get(layer, ())) and (
                ".".join(name.split(".")[:2]),
                ".".join(dep_mod.split(".")[:2]),
            ) not in ALLOWED:
                bad.append(f"{name} imports {dep_mod}")
    assert not bad, bad


def test_module_level_imports_have_no_cycle():
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for dep in _imports(path, module_level_only=True):
            dep_mod = dep if dep in mods else dep.rsplit(".", 1)[0]
            if dep_mod in mods and dep_mod != name:
                deps.add(dep_mod)
        graph[name] = deps
    # a package imports its submodules and they import siblings through it: only cycles between modules that
    # are not each other's package count
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if m.startswith(d + ".") or d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, cycles


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out.splitlines() if (ROOT / f).is_file()]


TEXT = (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".cfg", ".txt", ".json")


def test_the_repository_speaks_of_the_project_only():
    # built from pieces so that this file does not match itself
    words = re.compile(r"\b(" + "sess" + r"ions?\b|" + "iss" + r"ue\s*#?\d+|" + "iss" + r"ue's)", re.IGNORECASE)
    hits = []
    for f in _tracked_files():
        if f.suffix not in TEXT:
            continue
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if words.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits[:20])


_REF = re.compile(r"((?:docs|benchmarks|experiments|boltzdiff|tests)/[\w./-]+\.(?:md|py|json|png|yaml|sh))(#[\w-]+)?")


def _anchors(md: Path) -> set[str]:
    text = md.read_text()
    ids = set(re.findall(r'<a id="([\w-]+)"', text))
    for h in re.findall(r"^#+\s+(.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        ids.add(slug)
    return ids


def test_every_cited_file_and_anchor_exists():
    missing = []
    for f in _tracked_files():
        if f.suffix not in (".py", ".md", ".yaml", ".yml") or "results" in f.parts:
            continue
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for path, anchor in _REF.findall(line):
                path = path.rstrip(".")
                target = ROOT / path
                if "*" in path or "<" in path or path.startswith("boltzdiff/systems/<"):
                    continue
                if not target.exists():
                    missing.append(f"{f.relative_to(ROOT)}:{i}: {path}")
                elif anchor and target.suffix == ".md" and anchor[1:] not in _anchors(target):
                    missing.append(f"{f.relative_to(ROOT)}:{i}: {path}{anchor}")
    assert not missing, "\n".join(missing[:30])
