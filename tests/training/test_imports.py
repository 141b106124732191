"""Every training module imports on its own (no import cycles hidden in functions), and
export needs nothing from the service."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    ".".join(p.relative_to(ROOT / "training").with_suffix("").parts)
    for p in (ROOT / "training").rglob("*.py")
    if p.stem not in ("__main__", "__init__")
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone_in_a_fresh_interpreter(module):
    done = subprocess.run(
        [sys.executable, "-c", f"import training.{module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_export_imports_nothing_from_the_service():
    code = (
        "import sys, training.export, training.fit.train, training.models.architectures; "
        "print(sorted(m for m in sys.modules if m == 'service' or m.startswith('service.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_model_modules_do_not_import_each_other():
    """gru4rec, bloom and prnn share gru.py; only architectures.py knows all three."""
    for name, others in {"gru4rec": ("bloom", "prnn"), "bloom": ("gru4rec", "prnn")}.items():
        text = (ROOT / "training" / "models" / f"{name}.py").read_text()
        assert not any(f"from .{o} import" in text for o in others), name
