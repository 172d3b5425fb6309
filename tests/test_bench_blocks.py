"""The benchmark blocks of docs/benchmarks.md have the layout the current scripts write, and the scripts' rendering says
PASS or MISS, timed out or measured, as the figures say. No benchmark runs here: the blocks are parsed."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from dualadam.reporting.readme_blocks import read_block

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"   # where `make bench-optim` and `make bench-train` write
BENCHMARKS = BENCHMARKS_DOC.read_text()
BLOCKS = {"bench_optim": "bench-optim", "bench_train": "bench-train"}
MEASURED_LINE = re.compile(r"^Measured \d{4}-\d{2}-\d{2} on .+\(\d+ CPUs, \d+ torch thread\(s\)\), torch \S+; "
                           r"load average [\d.]+ at the start, [\d.]+ at the end, by `python scripts/\w+\.py[^`]*` "
                           r"\(full size: ")


def load_script(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[name]


def markdown_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(header line, body rows as lists of cells) of every Markdown table in ``text``."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                body.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            tables.append((line.strip(), body))
    return tables


@pytest.mark.parametrize("script", BLOCKS)
def test_benchmark_block_has_the_layout_the_script_writes(script):
    module = load_script(script)
    block = read_block(BENCHMARKS, BLOCKS[script])
    assert block is not None, f"docs/benchmarks.md has no {BLOCKS[script]} block: run `make {BLOCKS[script]}`"
    first = block.splitlines()[0]
    pending = module.render_block(None).splitlines()[0]
    assert first == pending or MEASURED_LINE.match(first), f"not a full-size run's block: run `make {BLOCKS[script]}`"
    tables = markdown_tables(block)
    layout = module.block_layout()
    assert [header for header, _ in tables] == [header for header, _ in layout], f"run `make {BLOCKS[script]}`"
    for (_, rows), (_, keys) in zip(tables, layout):
        assert [tuple(row[:len(keys[0])]) for row in rows] == keys, f"run `make {BLOCKS[script]}`"


@pytest.mark.parametrize(("script", "block"), [*BLOCKS.items(), ("gpu_check", "gpu-check")])
def test_make_target_publishes_into_the_doc_that_holds_its_block(script, block):
    """`make <target>` names the Markdown file its script rewrites; that file has the block's markers."""
    makefile = (REPO / "Makefile").read_text()
    found = re.findall(rf"scripts/{script}\.py --doc (\S+)", makefile)
    assert found == [str(BENCHMARKS_DOC.relative_to(REPO))], f"the Makefile's {script}.py line: {found}"
    assert read_block((REPO / found[0]).read_text(), block) is not None


def test_a_pending_block_claims_no_measurement():
    for script in BLOCKS:
        block = load_script(script).render_block(None)
        assert block.startswith("Not yet measured") and "PASS" not in block and "MISS" not in block


def bench_optim_results(ratio: float, compile_9groups: dict) -> dict:
    """Results as bench_optim.py records them: every steady ratio equal to ``ratio``."""
    bench = load_script("bench_optim")
    measured = {key: {"ms": {"dualadam": 2.0 * ratio, "torch": 2.0}, "ratio": ratio, "quartiles": [ratio, ratio],
                      "warnings": []} for key in bench.MEASUREMENTS}
    cases = {name: {"tensors": 1, "params": 1, "groups": 1, "measurements": measured,
                    "compile": {"seconds": 10.0, "first_step_s": 10.5, "steady_step_s": 0.5, "warnings": []}}
             for name in bench.CASES}
    cases["resnet18_9groups"]["compile"] = compile_9groups
    context = {"date": "2026-12-06", "cpu": "CPU", "cpu_count": 2, "torch_threads": 1, "torch": "2.14.1",
               "device": "cpu", "gpu": None, "load_start": 0.5, "load_end": 0.7}
    return {"mode": "full size", "command": "python scripts/bench_optim.py --readme README.md", "rounds": 20,
            "steps": 3, "context": context, "cases": cases}


def test_bench_optim_block_passes_targets_met_and_misses_a_timed_out_compile():
    bench = load_script("bench_optim")
    timed_out = {"error": "timed out after 600 s", "timed_out": True, "limit_s": 600.0}
    block = bench.render_block(bench_optim_results(1.0, timed_out))
    assert MEASURED_LINE.match(block.splitlines()[0])
    steady, compiled = (rows for _, rows in markdown_tables(block))
    assert {row[-1] for row in steady} == {"PASS"} and all(row[6] == "**1.000**" for row in steady)
    assert compiled[1][1:] == ["timed out after 600 s", "> 57.1", "<= 1.5", "MISS"]  # 600 s / a 10.5 s first step
    assert compiled[2][2:] == ["**1.00**", "<= 1.5", "PASS"]


def test_bench_optim_block_misses_a_ratio_above_its_target():
    bench = load_script("bench_optim")
    results = bench_optim_results(1.2, {"seconds": 16.0, "first_step_s": 16.5, "steady_step_s": 0.5, "warnings": []})
    steady, compiled = (rows for _, rows in markdown_tables(bench.render_block(results)))
    verdicts = {(row[1], row[2]): row[-1] for row in steady}
    assert verdicts == {("blend", "`foreach=True`"): "PASS", ("blend", "`fused=True`"): "MISS",
                        ("after switch", "`default`"): "MISS"}
    assert compiled[1][2:] == ["**1.60**", "<= 1.5", "MISS"]


def test_bench_optim_parameter_sets_are_the_models_they_name():
    bench = load_script("bench_optim")
    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet18()
    assert bench.resnet18_shapes() == [(name, tuple(p.shape)) for name, p in resnet.named_parameters()]
    lora = bench.lora_shapes()
    assert len(lora) == 240 and lora[:2] == [("layers.0.q_proj.lora_A", (8, 576)), ("layers.0.q_proj.lora_B", (576, 8))]
    assert ("layers.29.k_proj.lora_B", (192, 8)) in lora
    groups = bench.resnet18_nine_groups(bench.resnet18_shapes())
    assert len(groups) == 9 and sorted(n for g in groups for n in g["names"]) == sorted(n for n, _ in bench.resnet18_shapes())


@pytest.mark.slow
def test_bench_optim_quick_run_measures_every_comparison_of_a_case(tmp_path):
    """The script end to end at tiny size (its child processes, the fused path's compile, the JSON, the block):
    a smoke run whose figures are not checked, only that each comparison has one."""
    import json
    import os
    import subprocess

    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "bench_optim.py"), "--quick", "--cases", "lora",
                    "--no-compile-probe", "--json", str(out)], check=True, timeout=900, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    results = json.loads(out.read_text())
    bench = load_script("bench_optim")
    assert set(results["cases"]["lora"]["measurements"]) == set(bench.MEASUREMENTS)
    assert all(m["ratio"] > 0 for m in results["cases"]["lora"]["measurements"].values())
    steady, _ = (rows for _, rows in markdown_tables(bench.render_block(results)))
    lora = [row for row in steady if row[0] == bench.CASES["lora"].title]
    assert len(lora) == 3 and all(row[-1] in ("PASS", "MISS") for row in lora)
