"""A compiled copy of the simulator, for long campaigns and the speed figure.

``python -m electiond.sim native-build [--out DIR]`` copies the package's
source into DIR and compiles the modules that do the work per event (the
protocols, the detector, the Node glue and the simulator's core) with mypyc.
Running ``python -m electiond.sim ...`` with DIR first on PYTHONPATH
(``scripts/sim`` does both) then runs the very same source, compiled to C:
the traces are byte-for-byte those of the interpreted run (a test compares
them), only faster.

Why compile rather than rewrite: the simulator's worth is that it drives the
daemon's own code. A faster copy of the protocols would be a second
implementation to keep in step; compiling the one source keeps a single one.

mypy (which carries mypyc) and a C compiler are needed to build, never to
run the daemon: the Debian package ships the interpreted source.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import electiond

# the modules that run per simulated event; the rest (runner, faults, CLI,
# explorer, scenario) run once per seed and stay interpreted
MODULES = (
    "electiond/protocols/base.py",
    "electiond/protocols/epoch.py",
    "electiond/protocols/bully.py",
    "electiond/protocols/ring.py",
    "electiond/protocols/lease.py",
    "electiond/clockrate.py",
    "electiond/detector.py",
    "electiond/node.py",
    "electiond/sim/clock.py",
    "electiond/sim/network.py",
    "electiond/sim/checker.py",
    "electiond/sim/cluster.py",
    # the embedded coordination store and its simulator (tests/test_coord_sim.py, the CI campaign)
    "electiond/coord/replica.py",
    "electiond/coord/host.py",
    "electiond/sim/coordsim.py",
)
STAMP = ".electiond-native-build"


class BuildError(RuntimeError):
    pass


def package_source_root() -> Path:
    """The directory holding the ``electiond`` package being run."""
    return Path(electiond.__file__).resolve().parent.parent


def _source_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "electiond").rglob("*.py") if "__pycache__" not in p.parts)


def _fingerprint(root: Path) -> str:
    """What the compiled modules depend on: their source and the tools."""
    import mypy.version

    h = hashlib.sha256()
    h.update(f"{sys.version} mypy {mypy.version.__version__}\n".encode())
    for m in MODULES:
        h.update(m.encode())
        h.update((root / m).read_bytes())
    return h.hexdigest()


def _copy_source(root: Path, out: Path, skip: frozenset[str] = frozenset()) -> None:
    """Copy the package's .py files that changed, but those in ``skip``."""
    for p in _source_files(root):
        rel = p.relative_to(root)
        if rel.as_posix() in skip:
            continue
        dest = out / rel
        if not dest.exists() or dest.read_bytes() != p.read_bytes():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)


def mypyc_available() -> str | None:
    """None when a build can run here, else why not."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (pip install mypy; scripts/sim and scripts/test do it)"
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        return "no C compiler (apt-get install gcc)"
    return None


def build(out: Path, source_root: Path | None = None) -> Path:
    """Compile a copy of the source into ``out``; reuse it if the source is unchanged.

    Builds into one ``out`` are serialized by a lock beside it: scripts/test
    starts a build while the suite runs, and every test process that needs
    it then waits for that one instead of compiling its own."""
    import fcntl

    why_not = mypyc_available()
    if why_not:
        raise BuildError(why_not)
    root = (source_root or package_source_root()).resolve()
    out = out.resolve()
    if out == root:
        raise BuildError("the build directory must not be the source tree (its .so files would shadow the .py)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(root, out)


def _build_locked(root: Path, out: Path) -> Path:
    want = _fingerprint(root)
    stamp = out / STAMP
    if stamp.exists() and stamp.read_text() == want and all(_compiled(out, m) for m in MODULES):
        # the interpreted modules may have changed: no rebuild for them
        _copy_source(root, out, skip=frozenset(MODULES))
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _copy_source(root, out)
    log = out / "build.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "mypyc", *MODULES], cwd=out, stdout=f, stderr=subprocess.STDOUT,
                           env=env, check=False)
    if r.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise BuildError(f"mypyc failed (exit {r.returncode}); full log: {log}\n{tail}")
    missing = [m for m in MODULES if not _compiled(out, m)]
    if missing:
        raise BuildError(f"mypyc left these modules uncompiled: {missing}; log: {log}")
    stamp.write_text(want)
    return out


def _compiled(out: Path, module_path: str) -> bool:
    p = out / module_path
    return any(p.parent.glob(p.stem + ".*.so"))


def _modules() -> list[ModuleType]:
    return [sys.modules.get(n) or importlib.import_module(n)
            for n in (m[: -len(".py")].replace("/", ".") for m in MODULES)]


def build_kind() -> str:
    """``mypyc`` when every per-event module runs compiled, ``interpreted``
    when none does, else how many do.

    The figures a run prints say which, so that a speed is never quoted
    without the build that gave it.
    """
    compiled = sum(not (module.__file__ or "").endswith(".py") for module in _modules())
    if compiled == len(MODULES):
        return "mypyc"
    if compiled == 0:
        return "interpreted"
    return f"partly compiled ({compiled}/{len(MODULES)} modules)"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m electiond.sim native-build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=package_source_root() / ".build" / "sim-native",
                   help="where the compiled copy goes (default: .build/sim-native beside the package)")
    a = p.parse_args(argv)
    try:
        out = build(a.out)
    except BuildError as e:
        print(f"native-build: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
