"""``pip install dualadam`` is the optimizer on torch alone: a light import that changes no torch setting, and a
wheel that installs and trains in a venv holding torch and nothing else."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SUITE_MODULES = ("timm", "torchvision", "hydra", "omegaconf", "wandb", "transformers", "peft", "matplotlib",
                 "optuna", "scipy")

# One DualAdam step on a tiny least-squares problem; prints where dualadam came from and the loss before/after.
ONE_STEP = """
import json, torch, dualadam
torch.manual_seed(0)
w = torch.nn.Parameter(torch.randn(8))
x, y = torch.randn(32, 8), torch.randn(32)
opt = dualadam.DualAdam([w], lr=1e-2, switch_rate=0.1)
losses = []
for _ in range(2):
    opt.zero_grad()
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print(json.dumps({"file": dualadam.__file__, "losses": losses}))
"""


def clean_env() -> dict[str, str]:
    """The environment minus anything that would put this checkout or the main venv on the child's path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run_python(python, code: str, cwd: Path, env=None) -> str:
    result = subprocess.run([str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# --- the import ----------------------------------------------------------------------------------------------

def test_import_dualadam_loads_no_suite_library_and_keeps_torch_settings(tmp_path):
    code = f"""
import json, sys, torch

def settings():
    return {{"dynamo": torch._dynamo.config.get_config_copy(), "inductor": torch._inductor.config.get_config_copy(),
            "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
            "matmul": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}}

before = settings()
import dualadam
after = settings()
changed = sorted(k for k in before if before[k] != after[k])
changed += sorted(f"{{k}}.{{n}}" for k in ("dynamo", "inductor") for n in before[k] if before[k][n] != after[k][n])
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({list(SUITE_MODULES)!r}))
print(json.dumps({{"loaded": loaded, "changed": changed, "file": dualadam.__file__}}))
"""
    out = json.loads(run_python(sys.executable, code, tmp_path, {**os.environ, "PYTHONPATH": str(REPO)}))
    assert Path(out["file"]).is_relative_to(REPO)
    assert out["loaded"] == []
    assert out["changed"] == []


def test_timm_registration_by_the_suite_and_the_one_liner_keeps_dynamos_recompile_limit(tmp_path):
    """Importing timm.optim raises it to 1e6 (timm's kron.py); the suite's optimizer factory and
    ``register_with_timm()`` both put the user's value back."""
    pytest.importorskip("timm")
    pytest.importorskip("hydra")
    code = """
import json, torch
torch._dynamo.config.cache_size_limit = 13
from dualadam.training.optimizers import optimizer_names
suite = {"limit": torch._dynamo.config.cache_size_limit, "registered": "dualadam" in optimizer_names()}
import dualadam
timm_optim = dualadam.register_with_timm()
opt = timm_optim.create_optimizer_v2(torch.nn.Linear(3, 2), "dualadam", lr=1e-2)
print(json.dumps({"suite": suite, "limit": torch._dynamo.config.cache_size_limit, "cls": type(opt).__name__}))
"""
    out = json.loads(run_python(sys.executable, code, tmp_path, {**os.environ, "PYTHONPATH": str(REPO)}))
    assert out == {"suite": {"limit": 13, "registered": True}, "limit": 13, "cls": "DualAdam"}


# --- the wheel -----------------------------------------------------------------------------------------------

def build_wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of the package's sources (an in-tree build would write build/ into the repo)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "dualadam", source / "dualadam", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("dualadam-*.whl")
    return wheel


def torch_closure() -> dict[str, metadata.Distribution]:
    """torch's distribution and every distribution its requirements need on this machine (extras that a
    requirement asks for included, e.g. ``cuda-toolkit[cublas]``), by canonical name."""
    environment = default_environment()
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    pending = [("torch", "")]
    while pending:
        name, extra = pending.pop()
        name = name.lower().replace("_", "-")
        if (name, extra) in done:
            continue
        done.add((name, extra))
        found[name] = dist = found.get(name) or metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or ()):
            if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": extra}):
                pending += [(requirement.name, e) for e in ("", *requirement.extras)]
    return found


def link_farm(distributions, folder: Path) -> Path:
    """``folder`` holding a symlink to each top-level file or folder the distributions installed (packages,
    extension modules, their .dist-info), so the venv sees exactly these distributions and no others."""
    folder.mkdir()
    for dist in distributions:
        site_packages = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or () if not Path(f).parts[0] == ".."}:
            if not (folder / top).exists() and not top.endswith(".pth"):
                (folder / top).symlink_to(site_packages / top)
    return folder


def torch_only_venv(tmp_path: Path) -> Path:
    """A fresh venv without system site-packages, with torch made visible through a .pth file (see
    ``test_wheel_installs_and_trains_in_a_venv_with_torch_alone`` for why); returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    purelib = run_python(python, "import sysconfig; print(sysconfig.get_path('purelib'))", tmp_path,
                         clean_env()).strip()
    farm = link_farm(torch_closure().values(), tmp_path / "torch-closure")
    (Path(purelib) / "torch_closure.pth").write_text(f"{farm}\n")
    return python


def pip_into(python: Path, *args: str) -> str:
    """This venv's pip working on the venv of ``python`` (which has no pip of its own)."""
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args], capture_output=True,
                            text=True, timeout=300, env=clean_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_wheel_declares_torch_as_its_only_requirement(tmp_path):
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in wheel.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    unconditional = [r for r in requires if "extra ==" not in r]
    assert [Requirement(r).name for r in unconditional] == ["torch"]
    extras = {re.search(r'extra == "(\w+)"', r).group(1) for r in requires if "extra ==" in r}
    assert extras == {"suite", "llm", "dev"}


def test_wheel_installs_and_trains_in_a_venv_with_torch_alone(tmp_path):
    """A venv made with ``python -m venv`` (no system site-packages) gets the wheel with ``--no-deps``, and torch
    with its own runtime requirements (filelock, sympy, the CUDA libraries, ...) as symlinks into the test's
    venv, listed by a .pth file. A real ``pip install`` of torch would copy its 5.5 GB CUDA build and take
    minutes; the symlinks take a second and give the same environment: ``pip check`` finds every requirement
    of dualadam and torch met, ``pip list`` shows nothing beyond dualadam and torch's closure, and ``import
    timm`` fails there. ``test_wheel_pip_installs_with_its_real_dependencies`` (slow) does the real install.
    """
    python = torch_only_venv(tmp_path)
    pip_into(python, "install", "--quiet", "--no-deps", "--no-index", str(build_wheel(tmp_path)))

    assert "No broken requirements" in pip_into(python, "check")
    visible = {d["name"].lower().replace("_", "-") for d in json.loads(pip_into(python, "list", "--format=json"))}
    assert visible == {"dualadam", *torch_closure()}
    code = ONE_STEP + f"""
print(json.dumps([n for n in {list(SUITE_MODULES)!r} if __import__("importlib.util").util.find_spec(n)]))
"""
    step_line, importable_line = run_python(python, code, tmp_path, clean_env()).splitlines()
    step = json.loads(step_line)
    assert Path(step["file"]).is_relative_to(tmp_path / "venv"), "dualadam must come from the installed wheel"
    assert step["losses"][1] < step["losses"][0]
    assert json.loads(importable_line) == [], "the suite's libraries must not be importable there"


@pytest.mark.slow
def test_wheel_pip_installs_with_its_real_dependencies(tmp_path):
    """The honest end to end: ``pip install dualadam-*.whl`` into a fresh venv resolves and copies torch
    itself (from this machine's package index; minutes, as it copies the CUDA build), and nothing else."""
    venv.EnvBuilder(with_pip=True, symlinks=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    wheel = build_wheel(tmp_path)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=1800,
                   env=clean_env())
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, text=True,
                            capture_output=True, env=clean_env()).stdout
    visible = {d["name"].lower().replace("_", "-") for d in json.loads(listed)}
    assert {"dualadam", "torch"} <= visible
    assert not visible & {"timm", "torchvision", "hydra-core", "wandb", "transformers", "numpy", "matplotlib"}
    step = json.loads(run_python(python, ONE_STEP, tmp_path, clean_env()))
    assert step["losses"][1] < step["losses"][0]
