"""Regenerate the hashed locks in ``requirements/`` from ``pyproject.toml`` with the pinned uv (README "Install").

    python scripts/lock.py               # rewrite requirements/*.txt (PyPI); `make lock` runs this
    python scripts/lock.py --check       # regenerate into a temporary folder; exit 1 naming the files that differ
    python scripts/lock.py --torch cpu   # requirements/torch-cpu.txt from download.pytorch.org (Linux x86_64)
    python scripts/lock.py --torch cu126 # requirements/torch-cu126.txt, the CUDA 12.6 build (Linux x86_64)

What it writes (every requirement pinned with ``==`` and carrying the sha256 of every file of that release, so
``pip install --require-hashes`` installs exactly these files):

* ``requirements/<use>.txt`` for ``core`` (what ``bapose-train`` needs), one per extra (``export``, ``sweep``,
  ``notebooks``) and ``test`` (what ``make test`` needs: the ``test`` extra and every extra the suite imports). Each
  is complete for its use *except* the torch pair: torch, torchvision and the wheels only they pull in (CUDA
  libraries, triton) live in ``requirements/torch-<variant>.txt``, so one use lock goes with any torch variant.
  Universal locks (``uv pip compile --universal``, Python >= 3.11): one file for Linux, macOS and Windows, platform
  differences as environment markers. Every use lock is resolved under the pins of one resolution of all extras
  together, so any set of them can be installed side by side.
* ``requirements/torch-cu130.txt``: torch / torchvision from PyPI (the CUDA 13 build on Linux, with its CUDA wheels;
  CPU-only on macOS and Windows, where PyPI's torch has no CUDA dependencies).
* ``--torch cpu`` / ``--torch cu126``: ``torch==<pin>+cpu`` / ``+cu126`` from ``download.pytorch.org/whl/<variant>``
  for Linux x86_64 (``--python-platform x86_64-manylinux_2_28``), under the core lock's pins; the file keeps only what
  the core lock does not already hold (torch, torchvision and, for cu126, the CUDA 12 wheels) and names the index.
* ``requirements/tools.txt``: what ``make`` installs first into a venv: pip and uv (the lock tool, at the version that
  made these files: ``make lock`` and ``tests/test_locks.py`` run it). ``requirements/build.in``: the build backend
  (``[build-system] requires``; ``make`` installs bapose editable with ``--no-build-isolation``), part of every lock.

Existing locks are uv's preferences: a regeneration keeps every pin that still satisfies ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
UV_VERSION = "0.13.9"
TOOLS = ("pip==25.3", f"uv=={UV_VERSION}")
PYTHON = "3.11"
# the extras each use lock adds to the core dependencies
USES: dict[str, tuple[str, ...]] = {
    "core": (),
    "export": ("export",),
    "sweep": ("sweep",),
    "notebooks": ("notebooks",),
    "test": ("test", "export", "sweep", "notebooks"),
}
USE_NOTES = {
    "core": "bapose's dependencies (bapose-train, -eval, -predict, ...): `make train` installs this",
    "export": "core + the `export` extra (bapose-export: ONNX, onnxruntime)",
    "sweep": "core + the `sweep` extra (Optuna sweeps, the SLURM launcher)",
    "notebooks": "core + the `notebooks` extra (running notebooks/)",
    "test": "core + the `test` extra + every extra the test suite imports (export, sweep, notebooks): `make test`",
}
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
TORCH_VARIANTS = ("cu130", "cpu", "cu126")
TORCH_NOTES = {
    "cu130": "torch / torchvision from PyPI: the CUDA 13 build on Linux (x86_64 and aarch64, with the CUDA wheels "
             "below), CPU-only on macOS and Windows",
    "cpu": "torch / torchvision CPU-only builds from download.pytorch.org/whl/cpu (Linux x86_64): no CUDA wheels",
    "cu126": "torch / torchvision CUDA 12.6 builds from download.pytorch.org/whl/cu126 (Linux x86_64), with the "
             "CUDA 12 wheels they require",
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_torch_family(name: str) -> bool:
    """torch, torchvision and what only they pull in: the CUDA libraries and triton."""
    n = normalize(name)
    return n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-"))


class LockError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------- uv's output
def blocks(text: str) -> list[tuple[str, str]]:
    """``(normalized name, block text)`` of every requirement in uv's output: the ``name==version ; markers`` line
    and its indented ``--hash`` / ``# via`` lines. Header comments and option lines are dropped."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith((" ", "\t")):
            if out:
                name, body = out[-1]
                out[-1] = (name, body + line + "\n")
            continue
        if not line.strip() or line.startswith(("#", "-")):
            continue
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==", line)
        if not m:
            raise LockError(f"unexpected line in uv's output: {line!r}")
        out.append((normalize(m[1]), line + "\n"))
    return out


def pins(text: str) -> list[str]:
    """The requirement lines (``name==version ; markers``) of a lock, without hashes: a constraints file."""
    return [body.splitlines()[0].rstrip(" \\") for _, body in blocks(text)]


def header(title: str, install: str, how: str = "`uv pip compile --universal --generate-hashes` from pyproject.toml",
           command: str = "python scripts/lock.py") -> str:
    return (f"# {title}\n"
            f"# install: {install}\n"
            f"# generated by `{command}` (uv {UV_VERSION}, {how}); do not edit\n")


# ------------------------------------------------------------------------------------------------- uv
def uv_binary() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise LockError(f"uv not found; expected uv=={UV_VERSION} (pip install uv=={UV_VERSION}, or `make lock`)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    if version != UV_VERSION:
        raise LockError(f"{found} is uv {version}; the locks are made with uv {UV_VERSION} "
                        f"(pip install uv=={UV_VERSION}, or `make lock`)")
    return found


def compile_(uv: str, inputs: list[str], out: Path, *args: str) -> str:
    """``uv pip compile`` (in the repo root) into ``out`` (its current content, if any, is uv's preference: pins it
    keeps while they satisfy the inputs); returns the text written."""
    cmd = [uv, "pip", "compile", *inputs, "-o", str(out), "--generate-hashes", "--python-version", PYTHON,
           "--no-header", "--quiet", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LockError(f"uv pip compile failed ({' '.join(cmd[3:])}):\n{proc.stderr.strip()}")
    return out.read_text()


def build_requires() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["build-system"]["requires"])


def write_build_in(req: Path) -> None:
    lines = ["# [build-system] requires of pyproject.toml: `make` installs bapose editable with "
             "--no-build-isolation, so the build backend is part of every lock (written by scripts/lock.py)",
             *build_requires()]
    (req / "build.in").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------- the locks
def lock_all(out_dir: Path, seed_dir: Path, upgrade: list[str] = ()) -> None:
    """Every use lock, ``torch-cu130.txt`` and ``tools.txt`` into ``out_dir`` (``seed_dir``'s locks as preferences,
    except for the packages in ``upgrade``)."""
    uv = uv_binary()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_build_in(out_dir)
    build_in = str(out_dir / "build.in")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. one resolution of everything, preferring the pins of the current locks
        seed = "".join((seed_dir / f"{name}.txt").read_text() for name in ("test", "torch-cu130")
                       if (seed_dir / f"{name}.txt").is_file())
        union_out = work / "all.txt"
        union_out.write_text(seed)
        union = compile_(uv, ["pyproject.toml", build_in, "--all-extras"], union_out, "--universal",
                         *[a for name in upgrade for a in ("--upgrade-package", name)])
        constraints = work / "constraints.txt"
        constraints.write_text("\n".join(pins(union)) + "\n")
        # 2. each use under those pins; the torch family split off
        torch_part = None
        for use, extras in USES.items():
            text = compile_(uv, ["pyproject.toml", build_in, *[a for e in extras for a in ("--extra", e)]],
                            work / f"{use}.txt", "--universal", "-c", str(constraints),
                            "--no-annotate")
            rest = [body for name, body in blocks(text) if not is_torch_family(name)]
            torch = [body for name, body in blocks(text) if is_torch_family(name)]
            if torch_part is None:
                torch_part = torch
            elif torch != torch_part:
                raise LockError(f"the torch family of the {use!r} lock differs from the core lock's")
            install = f"pip install --require-hashes -r requirements/torch-<variant>.txt -r requirements/{use}.txt"
            (out_dir / f"{use}.txt").write_text(header(f"bapose lock `{use}`: {USE_NOTES[use]}", install)
                                                + "".join(rest))
        install = "pip install --require-hashes -r requirements/torch-cu130.txt -r requirements/<use>.txt"
        (out_dir / "torch-cu130.txt").write_text(header(f"bapose lock `torch-cu130`: {TORCH_NOTES['cu130']}",
                                                        install) + "".join(torch_part or []))
        # 3. the tools
        tools_in = work / "tools.in"
        tools_in.write_text("\n".join(TOOLS) + "\n")
        text = compile_(uv, [str(tools_in)], work / "tools.txt", "--universal", "--no-annotate")
        (out_dir / "tools.txt").write_text(header(f"bapose lock `tools`: what `make` installs first into a venv "
                                                  f"({', '.join(TOOLS)}; uv makes these locks)",
                                                  "python -m pip install --require-hashes -r requirements/tools.txt")
                                           + "".join(body for _, body in blocks(text)))


def lock_torch(variant: str, out_dir: Path) -> Path:
    """``<out_dir>/torch-<variant>.txt`` for a download.pytorch.org build (Linux x86_64): torch and torchvision
    ``==<pyproject pin>+<variant>`` under the core lock's pins, keeping only what the core lock does not hold."""
    uv = uv_binary()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = {normalize(re.split(r"[=<>!~ ;]", d)[0]): d for d in data["project"]["dependencies"]}
    wanted = [f"{pinned[n].split(';')[0].strip()}+{variant}" for n in ("torch", "torchvision")]
    core = (REQ / "core.txt").read_text()
    index = TORCH_INDEX.format(variant=variant)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / f"torch-{variant}.in").write_text("\n".join(wanted) + "\n")
        (work / "constraints.txt").write_text("\n".join(pins(core)) + "\n")
        text = compile_(uv, [str(work / f"torch-{variant}.in")], work / "out.txt", "--python-platform",
                        "x86_64-manylinux_2_28", "-c", str(work / "constraints.txt"), "--extra-index-url", index,
                        "--index-strategy", "unsafe-best-match", "--no-annotate")
    in_core = {name for name, _ in blocks(core)}
    kept = [body for name, body in blocks(text) if name not in in_core]
    names = {name for name, _ in blocks(text) if name not in in_core}
    if not {"torch", "torchvision"} <= names:
        raise LockError(f"the {variant} resolution holds no torch / torchvision of its own: {sorted(names)}")
    path = out_dir / f"torch-{variant}.txt"
    install = f"pip install --require-hashes -r requirements/torch-{variant}.txt -r requirements/<use>.txt"
    how = f"`uv pip compile --python-platform x86_64-manylinux_2_28 --generate-hashes` from {index}"
    path.write_text(header(f"bapose lock `torch-{variant}`: {TORCH_NOTES[variant]}", install, how,
                           f"python scripts/lock.py --torch {variant}")
                    + f"--extra-index-url {index}\n" + "".join(kept))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="regenerate into a temporary folder and compare")
    ap.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                    help="let this package move to its newest allowed version (repeatable)")
    ap.add_argument("--torch", choices=[v for v in TORCH_VARIANTS if v != "cu130"],
                    help="write requirements/torch-<variant>.txt from download.pytorch.org")
    ap.add_argument("--out", type=Path, default=REQ, help="folder for --torch's lock (default: requirements/)")
    args = ap.parse_args(argv)
    try:
        if args.torch:
            args.out.mkdir(parents=True, exist_ok=True)
            print(f"wrote {lock_torch(args.torch, args.out)}")
            return 0
        if not args.check:
            lock_all(REQ, REQ, args.upgrade_package)
            print(f"wrote {', '.join(sorted(p.name for p in REQ.glob('*.txt')))} in {REQ.relative_to(REPO)}/")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp)
            lock_all(fresh, REQ)
            differ = []
            for new in sorted(fresh.iterdir()):
                old = REQ / new.name
                if not old.is_file() or old.read_text() != new.read_text():
                    differ.append(new.name)
                    diff = difflib.unified_diff(old.read_text().splitlines() if old.is_file() else [],
                                                new.read_text().splitlines(), f"requirements/{new.name}",
                                                "regenerated", lineterm="", n=1)
                    print("\n".join(list(diff)[:40]))
        if differ:
            print(f"stale locks: {', '.join(differ)} differ from `python scripts/lock.py`'s output", file=sys.stderr)
            return 1
        print("locks up to date")
        return 0
    except LockError as e:
        print(f"scripts/lock.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
