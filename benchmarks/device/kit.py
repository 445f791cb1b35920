"""Build the kit a lent GPU machine needs for ``benchmarks/gpu.sh``, here, where the package
registries can be reached (the machine reaches none).

``python -m benchmarks.device.kit`` writes ``.gpu/`` (git-ignored) in the repository root:

- ``wheels/``: the wheels of ``wheels.txt`` for CPython 3.12 on manylinux x86-64;
- ``quantize/``: ``wheels-quantize.txt``'s (bitsandbytes), for a call of their own;
- ``data.tar.gz``: fedlora's built-in domains as its cache holds them;
- ``smollm2-135m-config/``: SmolLM2-135M's config and tokenizer, without its weights
  (:mod:`benchmarks.device.random_model` gives it random ones there).

It prints what each device call carries against the tool's 64 MiB and exits 1 when a call
would not fit. ``--dry-run`` downloads nothing and lists the pins. Then, with the device tool:
``bash benchmarks/device/run.sh tests server`` carrying ``.gpu`` (README.md beside this file).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CARRY_LIMIT = 64 * 2**20
"""What one device call may carry: the working tree and the carried paths together."""
PLATFORMS = (
    "manylinux_2_28",
    "manylinux_2_27",
    "manylinux_2_24",
    "manylinux_2_17",
    "manylinux2014",
)
CALLS = {
    "tests / server / client": ("wheels", "data.tar.gz", "smollm2-135m-config"),
    "quantize": ("quantize",),
}
"""What each device call carries of the kit (README.md's table)."""
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def pins(listing: Path) -> list[str]:
    """The ``NAME==VERSION`` lines of a wheel list (comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in listing.read_text().splitlines())
    out = [line for line in lines if line]
    bad = [p for p in out if "==" not in p]
    if bad:
        raise ValueError(f"{listing}: not NAME==VERSION: {', '.join(bad)}")
    return out


def download(requirements: list[str], dest: Path) -> None:
    """``pip download`` the wheels for the device's Python (3.12, x86-64), no dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", f"{p}_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    cmd += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    subprocess.run([*cmd, *platforms, "-d", str(dest), *requirements], check=True)


def archive_data(dest: Path) -> None:
    """fedlora's built-in domains, provisioned here if they are not yet, as ``data/``."""
    from fedlora.data.cache import data_cache_dir
    from fedlora.data.domains import DOMAINS, load_records

    for name in DOMAINS:
        load_records(name)
    with tarfile.open(dest, "w:gz") as tar:
        for name in DOMAINS:
            tar.add(data_cache_dir() / name, arcname=f"data/{name}")


def copy_model_config(dest: Path) -> None:
    """SmolLM2-135M's config and tokenizer files (provisioned here if need be)."""
    from fedlora.models.smollm2 import provision_smollm2

    folder = provision_smollm2()
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (folder / name).exists():
            shutil.copyfile(folder / name, dest / name)


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tracked_size() -> int:
    """Bytes of the files git tracks: what travels with every call."""
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
    files = (ROOT / name.decode() for name in listing.stdout.split(b"\0") if name)
    return sum(f.stat().st_size for f in files if f.exists())


def report(kit: Path) -> bool:
    """Print each call's carried bytes against the limit; whether every call fits."""
    tree = tracked_size()
    fits = True
    for call, carried in CALLS.items():
        n = tree + sum(size(kit / part) for part in carried)
        ok = n <= CARRY_LIMIT
        fits &= ok
        paths = ", ".join(f".gpu/{part}" for part in carried)
        verdict = "ok" if ok else "TOO BIG"
        print(f"{call} (carry {paths}): {n / 2**20:.1f} MiB of {CARRY_LIMIT >> 20} {verdict}")
    return fits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device.kit", description=__doc__)
    p.add_argument("--out", default=str(ROOT / ".gpu"), help="the kit's folder (default .gpu)")
    p.add_argument("--dry-run", action="store_true", help="list the pins, download nothing")
    args = p.parse_args(argv)
    kit = Path(args.out)
    core, quantize = pins(HERE / "wheels.txt"), pins(HERE / "wheels-quantize.txt")
    if args.dry_run:
        print("\n".join(["wheels:", *core, "quantize:", *quantize]))
        return 0
    download(core, kit / "wheels")
    download(quantize, kit / "quantize")
    archive_data(kit / "data.tar.gz")
    copy_model_config(kit / "smollm2-135m-config")
    return 0 if report(kit) else 1


if __name__ == "__main__":
    raise SystemExit(main())
