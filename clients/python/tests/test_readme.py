"""The README worker examples (main README and this client's), run against the
binary: each ```python block right after a `<!-- example: run -->` line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import REPO, WRITE_TOKEN, Server

READMES = [REPO / "README.md", REPO / "clients" / "python" / "README.md"]


def examples(path: Path) -> List[str]:
    text = path.read_text()
    return re.findall(r"<!-- example: run -->\n```python\n(.*?)```", text, re.S)


def all_examples() -> List[Tuple[str, str]]:
    found = [(f"{path.relative_to(REPO)}#{i + 1}", code) for path in READMES for i, code in enumerate(examples(path))]
    return found


def test_every_readme_has_a_python_example_that_runs() -> None:
    for path in READMES:
        assert examples(path), f"{path}: no ```python block after <!-- example: run -->"


@pytest.mark.parametrize("name,code", all_examples(), ids=[n for n, _ in all_examples()])
def test_readme_example(memory_server: Server, name: str, code: str, tmp_path: Path) -> None:
    assert "http://localhost:8080" in code, "the example should talk to http://localhost:8080"
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://localhost:8080", memory_server.base_url))
    env = dict(os.environ, PYTHONPATH=str(REPO / "clients" / "python" / "src"), PROGRESS_WRITE_TOKEN=WRITE_TOKEN)
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"{name} exited {run.returncode}:\n{run.stderr}"
    ids = re.findall(r"""\.job\(\s*["']([^"']+)["']""", code)
    assert ids, f"{name}: no client.job(\"...\") in the example"
    for job_id in ids:
        record = memory_server.record(job_id)
        assert record["status"] == "completed", (name, record)
        if "total" in record:
            assert record["current"] == record["total"], (name, record)
