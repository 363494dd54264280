"""The hashed locks in requirements/ (scripts/lock.py, README "Install").

Offline: every lock pins and hashes every requirement, the use locks agree with each other and with pyproject.toml,
the torch family lives in its own lock. With PyPI (marked `network`; skipped when it cannot be reached): the locks
pin what scripts/lock.py makes from pyproject.toml today (the pins, not the hash lines); the universal lock resolved
for each platform brings CUDA wheels exactly where PyPI's torch is a CUDA build (Linux) and none on macOS / Windows;
the torch-free half of the Linux CPU route installs here without a CUDA wheel. The CPU route's own torch
(download.pytorch.org) is resolved only where that index can be reached."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
import urllib.request
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
spec = importlib.util.spec_from_file_location("bapose_lock_script", REPO / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)

USE_LOCKS = sorted(REQ / f"{use}.txt" for use in lock.USES)
ALL_LOCKS = [*USE_LOCKS, REQ / "torch-cu130.txt", REQ / "tools.txt"]
CUDA = re.compile(r"^(nvidia-|cuda-|triton$)")


def entries(path: Path) -> dict[str, list[str]]:
    """name -> its requirement lines (``name==version ; markers``) in a lock."""
    out: dict[str, list[str]] = {}
    for name, body in lock.blocks(path.read_text()):
        out.setdefault(name, []).append(body.splitlines()[0].rstrip(" \\"))
    return out


def version(line: str) -> str:
    return line.split("==", 1)[1].split(";")[0].strip()


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def declared(group: str | None) -> dict[str, str]:
    reqs = PYPROJECT["project"]["dependencies"] if group is None else \
        PYPROJECT["project"]["optional-dependencies"][group]
    return {lock.normalize(r.split("==")[0]): r.split("==")[1].split(";")[0].strip() for r in reqs}


# ------------------------------------------------------------------------------------------------ offline
@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_every_requirement_is_pinned_and_hashed(path):
    text = path.read_text()
    blocks = lock.blocks(text)
    assert blocks, path
    for name, body in blocks:
        first = body.splitlines()[0]
        assert re.match(r"[a-z0-9][a-z0-9._-]*==[^\s;]+", first), first
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", body), f"{path.name}: {name} has no hash"
    # nothing but requirements (pip would read an option such as --index-url) and comments
    assert all(not ln.startswith("-") for ln in text.splitlines()), path.name


def test_use_locks_agree_hold_core_and_what_pyproject_pins():
    core = entries(REQ / "core.txt")
    for path in USE_LOCKS:
        locked = entries(path)
        assert not [n for n in locked if lock.is_torch_family(n)], f"{path.name} holds a torch-family package"
        for name, lines in core.items():  # every use lock is complete for core: the very same lines
            assert locked.get(name) == lines, (path.name, name)
        extras = lock.USES[path.stem]
        for group in (None, *extras):
            for name, pin in declared(group).items():
                if lock.is_torch_family(name):
                    continue
                assert [version(ln) for ln in locked[name]] == [pin], (path.name, name)
    # one version per package wherever it appears
    seen: dict[str, list[str]] = {}
    for path in [*USE_LOCKS, REQ / "torch-cu130.txt"]:
        for name, lines in entries(path).items():
            assert seen.setdefault(name, lines) == lines, (path.name, name)
    # the build backend of `pip install -e . --no-build-isolation` is in every use lock
    build = {lock.normalize(r.split("==")[0]): r.split("==")[1] for r in PYPROJECT["build-system"]["requires"]}
    assert (REQ / "build.in").read_text().splitlines()[1:] == PYPROJECT["build-system"]["requires"]
    for path in USE_LOCKS:
        assert {n: version(entries(path)[n][0]) for n in build} == build


def test_torch_lock_holds_the_pinned_pair_and_only_the_torch_family():
    torch = entries(REQ / "torch-cu130.txt")
    core = declared(None)
    assert [version(ln) for ln in torch["torch"]] == [core["torch"]]
    assert [version(ln) for ln in torch["torchvision"]] == [core["torchvision"]]
    assert all(lock.is_torch_family(n) for n in torch)
    # PyPI's torch 2.14.1 pulls its CUDA 13 wheels on Linux only (markers), none elsewhere
    cuda = [ln for n, lines in torch.items() if CUDA.match(n) for ln in lines]
    assert len(cuda) >= 10 and all("sys_platform == 'linux'" in ln for ln in cuda)


def test_sweeps_run_on_maintained_optuna_and_sqlalchemy_and_unused_packages_are_gone():
    for name in ("sweep.txt", "test.txt"):
        locked = entries(REQ / name)
        assert int(version(locked["optuna"][0]).split(".")[0]) >= 4
        assert int(version(locked["sqlalchemy"][0]).split(".")[0]) >= 2
        assert "hydra-optuna-sweeper" not in locked
    everything = set().union(*(entries(p) for p in USE_LOCKS))
    assert not {"rich", "onnxscript"} & everything
    assert "tensorboard" in entries(REQ / "core.txt")
    tools = entries(REQ / "tools.txt")
    assert version(tools["uv"][0]) == lock.UV_VERSION and version(tools["pip"][0]) == "25.3"


def test_a_download_pytorch_org_lock_keeps_what_the_core_lock_lacks_and_names_its_index(tmp_path, monkeypatch):
    """scripts/lock.py --torch cpu's own part, on what uv would answer (the index itself is not reachable here)."""
    calls = []
    h = "    --hash=sha256:" + "0" * 64 + "\n"
    answer = ("torch==2.14.1+cpu \\\n" + h + "torchvision==0.29.1+cpu \\\n" + h + "filelock==4.3.1 \\\n" + h
              + "sympy==1.14.0 \\\n" + h)

    def fake_compile(uv, inputs, out, *args):
        calls.append((Path(inputs[0]).read_text(), args))
        return answer

    monkeypatch.setattr(lock, "uv_binary", lambda: "uv")
    monkeypatch.setattr(lock, "compile_", fake_compile)
    text = lock.lock_torch("cpu", tmp_path).read_text()
    (wanted, args), = calls
    assert wanted.split() == ["torch==2.14.1+cpu", "torchvision==0.29.1+cpu"]
    assert "https://download.pytorch.org/whl/cpu" in args and "x86_64-manylinux_2_28" in args
    assert "--extra-index-url https://download.pytorch.org/whl/cpu\n" in text
    # filelock and sympy are the core lock's (same pins, constrained): not repeated
    assert [n for n, _ in lock.blocks(text)] == ["torch", "torchvision"]


def test_the_makefile_installs_from_the_hashed_locks():
    make = (REPO / "Makefile").read_text()
    assert "--require-hashes -r $(TORCH_LOCK) -r requirements/$(1).txt" in make
    assert "--no-deps --no-build-isolation -e ." in make and "requirements.lock" not in make
    # a venv of the old requirements.lock loses hydra-optuna-sweeper (optuna<3; its hydra/sweeper/optuna schema
    # would clash with bapose's preset)
    assert re.search(r"^OBSOLETE := .*hydra-optuna-sweeper", make, re.M)
    dry = subprocess.run(["make", "-n", "test", "VENV=/nonexistent-venv", "TORCH=cu130"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "-r requirements/torch-cu130.txt -r requirements/test.txt" in dry.stdout
    assert "touch /nonexistent-venv/.bapose-test-cu130" in dry.stdout
    dry = subprocess.run(["make", "-n", "train", "VENV=/nonexistent-venv"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert "-r requirements/torch-cu130.txt -r requirements/core.txt" in dry.stdout


def test_a_venv_of_another_torch_build_is_refused_whatever_its_stamps(tmp_path):
    """The stamps carry the build's name: a venv made with TORCH=cpu has no fresh stamp for cu130, so `make test
    TORCH=cu130` runs the build check (which stops it before any install); under stamps without the name a fresh
    `.bapose-test` skipped the check. A venv of those old stamps installs once more."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".bapose-torch").write_text("cpu\n")
    for stamp in (".bapose-tools", ".bapose-test", ".bapose-test-cpu"):  # newer than the locks: fresh
        (venv / stamp).touch()

    def make(*args):
        return subprocess.run(["make", *args, f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=60)

    proc = make("test", "TORCH=cu130")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{venv} holds the torch build 'cpu', not TORCH=cu130" in proc.stderr
    assert "install" not in proc.stdout  # nothing ran before the check
    (venv / ".bapose-torch").write_text("cu130\n")
    (venv / ".bapose-test-cpu").unlink()
    dry = make("-n", "test")  # old stamps (.bapose-test): installs again, then drops them
    assert dry.returncode == 0 and "-r requirements/torch-cu130.txt -r requirements/test.txt" in dry.stdout
    assert f"rm -f {venv}/.bapose-core {venv}/.bapose-test" in dry.stdout and f"touch {venv}/.bapose-test-cu130" \
        in dry.stdout
    (venv / ".bapose-test-cu130").touch()
    dry = make("-n", "test")  # the venv's own build, its stamp fresh: straight to pytest
    assert dry.returncode == 0 and "pip install" not in dry.stdout and "-m pytest -q" in dry.stdout, dry.stdout


# ------------------------------------------------------------------------------------------------ with an index
@cache
def reachable(url: str) -> str | None:
    """None when ``url`` answers, else why not (DNS, connection, HTTP error)."""
    host = url.split("/")[2]
    try:
        socket.getaddrinfo(host, 443)
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=20):
            return None
    except Exception as err:  # noqa: BLE001 - any failure means: not here
        return f"{host} cannot be reached from this machine ({type(err).__name__}: {err})"


def uv() -> str:
    path = Path(sys.executable).with_name("uv")
    if not path.is_file():
        pytest.skip(f"uv {lock.UV_VERSION} is not in this venv (requirements/tools.txt: `make install` puts it there)")
    return str(path)


def needs_pypi():
    why = reachable("https://pypi.org/simple/uv/")
    if why:
        pytest.skip(why)


@pytest.mark.network
def test_the_locks_are_what_lock_py_makes_from_pyproject(tmp_path):
    """No drift from pyproject.toml: scripts/lock.py's regeneration (what `make lock` writes, the committed locks as
    uv's preferences) pins the same ``name==version ; markers`` lines in every lock file. The hash lines are not
    compared: a wheel uploaded to PyPI later for a pinned version adds one to a fresh lock, and nothing drifted (pip
    --require-hashes installs only files the committed lock names). That every pin carries a hash is checked offline
    (test_every_requirement_is_pinned_and_hashed); `make lock-check` compares byte for byte."""
    needs_pypi()
    uv()
    lock.lock_all(tmp_path, REQ)
    made = sorted(p.name for p in tmp_path.glob("*.txt"))
    assert made == sorted(p.name for p in ALL_LOCKS)
    assert (tmp_path / "build.in").read_text() == (REQ / "build.in").read_text()
    drift = {}
    for name in made:
        fresh, committed = (set(lock.pins((folder / name).read_text())) for folder in (tmp_path, REQ))
        if fresh != committed:
            drift[name] = {"regenerated only": sorted(fresh - committed), "committed only": sorted(committed - fresh)}
    assert drift == {}, "the locks drifted from pyproject.toml; run `make lock`"


def resolve(platform: str, *files: Path) -> dict[str, str]:
    """uv's resolution of ``files`` for another platform (environment markers and wheel tags of that platform):
    name -> version."""
    env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0"}  # PyPI's torch 2.14.1 wheels: macosx_14_0_arm64
    proc = subprocess.run([uv(), "pip", "compile", *map(str, files), "--python-platform", platform,
                           "--python-version", lock.PYTHON, "--no-header", "--no-annotate", "--quiet"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: version(body.splitlines()[0]) for name, body in lock.blocks(proc.stdout)}


@pytest.mark.network
@pytest.mark.parametrize(("platform", "cuda"), [("aarch64-apple-darwin", False), ("x86_64-pc-windows-msvc", False),
                                                ("x86_64-manylinux_2_28", True), ("aarch64-manylinux_2_28", True)])
def test_the_pypi_torch_route_brings_cuda_wheels_on_linux_only(platform, cuda):
    """What the default route (torch-cu130 + core) installs on each platform, resolved against PyPI: the locks are
    closed under each platform's dependencies (nothing outside them, at their versions), and CUDA wheels come
    exactly where PyPI's torch is a CUDA build: Linux, x86_64 and aarch64 alike. So the default route is the CPU-only
    install on macOS and Windows; on Linux the CPU-only route is TORCH=cpu."""
    needs_pypi()
    files = (REQ / "torch-cu130.txt", REQ / "core.txt")
    got = resolve(platform, *files)
    locked = {n: {version(ln) for ln in lines} for f in files for n, lines in entries(f).items()}
    assert got["torch"] == "2.14.1" and "lightning" in got
    assert {n: v for n, v in got.items() if v not in locked.get(n, ())} == {}
    cuda_names = sorted(n for n in got if CUDA.match(n))
    # on Linux: every nvidia-* / cuda-* / triton package of the torch lock, 19 of them (README "Install")
    in_lock = sorted(n for n in entries(REQ / "torch-cu130.txt") if CUDA.match(n))
    assert cuda_names == (in_lock if cuda else []) and len(in_lock) == 19, sorted(got)


@pytest.mark.network
def test_the_cpu_route_without_its_torch_installs_here_without_cuda_wheels(tmp_path):
    """The Linux CPU route is `requirements/torch-cpu.txt` (download.pytorch.org) + a use lock. This shows its
    non-torch half only: `pip install --dry-run --require-hashes --no-deps -r requirements/test.txt` succeeds on this
    machine (pip finds, for every pin, a file for this platform among those the lock hashes) and installs no torch /
    torchvision / nvidia-* / cuda-* / triton package. The second part follows from the lock itself (it holds no
    torch-family package, checked offline, and --no-deps adds nothing); the first is what this test adds. Whether the
    CPU torch brings CUDA wheels is test_the_cpu_route_resolves_without_a_cuda_wheel's (download.pytorch.org)."""
    needs_pypi()
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--require-hashes", "--no-deps", "--report", str(report), "-r", str(REQ / "test.txt")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {lock.normalize(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert {"lightning", "optuna", "onnxruntime", "tensorboard"} <= names
    assert not [n for n in names if CUDA.match(n) or n in ("torch", "torchvision")], sorted(names)


@pytest.mark.network
@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="the torch-cpu lock is made for Linux x86_64")
def test_the_cpu_route_resolves_without_a_cuda_wheel(tmp_path):
    """The whole Linux CPU route: its torch lock made from download.pytorch.org/whl/cpu (scripts/lock.py --torch
    cpu), then pip's resolution of it with the core lock. Runs only where that index answers."""
    why = reachable("https://download.pytorch.org/whl/cpu/torch/")
    if why:
        pytest.skip(f"{why}: the CPU route's torch cannot be locked or resolved here")
    uv()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "lock.py"), "--torch", "cpu", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_lock = tmp_path / "torch-cpu.txt"
    assert [version(ln) for ln in entries(torch_lock)["torch"]] == ["2.14.1+cpu"]
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--require-hashes", "--report", str(report), "-r", str(torch_lock), "-r",
                           str(REQ / "core.txt")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = {lock.normalize(i["metadata"]["name"]): i["metadata"]["version"]
             for i in json.loads(report.read_text())["install"]}
    assert items["torch"] == "2.14.1+cpu" and not [n for n in items if CUDA.match(n)], sorted(items)
