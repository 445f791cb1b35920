"""Run the quality benchmark from one pinned commit, so that main may change between sittings.

``python -m benchmarks.quality.pinned COMMIT [benchmark options]`` checks ``COMMIT`` out in a
git worktree of its own (``runs/pinned/<commit>``), gives it a virtual environment of its own
(its Makefile's, with its own pinned dependencies), and runs that commit's benchmark there.
The records it makes go to this checkout's results folder (``--results``, default the
plan's), where they are committed; each keeps the commit, the tree of ``src/fedlora`` and
the environment it was made by, and a claim is never decided from rows of different code or
environments. A later sitting pins the same commit and continues where the records end;
``--plan`` (passed through) lists what remains.

A bug found in a pinned commit's benchmark tooling after it was pinned is fixed on main and
carried to its worktree as a patch, ``pinned_fixes/<commit[:12]>-*.patch``, applied once. A
patch may touch ``benchmarks/`` only: the records' provenance names the tree of
``src/fedlora``, so a fix to the library itself would need a new pin instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "quality" / "results" / "default"
FIXES = Path(__file__).resolve().parent / "pinned_fixes"


def _git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def worktree(commit: str, base: Path) -> Path:
    """The worktree of ``commit`` under ``base`` (made on first use), with its venv."""
    full = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tree = base / full[:12]
    if not (tree / ".git").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), full], cwd=ROOT, check=True
        )
    if _git("rev-parse", "HEAD", cwd=tree) != full:
        raise SystemExit(f"{tree} is not at {full}; remove it (git worktree remove) and retry")
    apply_fixes(tree, sorted(FIXES.glob(f"{full[:12]}-*.patch")))
    subprocess.run(["make", "-C", str(tree), ".venv/.installed"], check=True)
    return tree


def foreign_paths(patch: Path) -> list[str]:
    """The files ``patch`` changes outside ``benchmarks/`` (what a pinned fix may not touch)."""
    stat = _git("apply", "--numstat", str(patch.resolve()))
    paths = [line.split("\t")[-1] for line in stat.splitlines()]
    return [path for path in paths if not path.startswith("benchmarks/")]


def apply_fixes(tree: Path, patches: list[Path]) -> None:
    """Apply each of ``patches`` to ``tree`` unless it is applied already; refuse one that
    touches anything outside ``benchmarks/``."""
    for patch in patches:
        if outside := foreign_paths(patch):
            raise SystemExit(f"{patch.name} touches {', '.join(outside)}: only benchmarks/ may be")
        path = str(patch.resolve())
        applied = ["git", "apply", "--reverse", "--check", path]
        if subprocess.run(applied, cwd=tree, capture_output=True).returncode == 0:
            continue
        out = subprocess.run(["git", "apply", path], cwd=tree, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{patch.name} does not apply to {tree}: {out.stderr.strip()}")
        print("pinned: applied", patch.name, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.pinned", description=__doc__
    )
    parser.add_argument("commit", help="the commit whose library and benchmark run")
    parser.add_argument("--worktrees", default=str(ROOT / "runs" / "pinned"))
    args, rest = parser.parse_known_args(argv)
    tree = worktree(args.commit, Path(args.worktrees))
    if "--results" not in rest:
        rest = ["--results", str(RESULTS), *rest]
    if "--out" not in rest:
        rest = ["--out", str(tree / "runs" / "bench-quality"), *rest]
    cmd = [str(tree / ".venv" / "bin" / "python"), "-m", "benchmarks.quality", *rest]
    print("pinned:", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
