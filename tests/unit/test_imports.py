"""Every module imports on its own in a fresh interpreter (catches import cycles and
modules that lean on an import order), and `import mlplat` stays cheap (no Ray, no torch)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mlplat


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(mlplat.__path__, "mlplat."))


def test_every_module_imports_alone():
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {_modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'mlplat' or m.startswith('mlplat.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_mlplat_is_light():
    out = subprocess.run([sys.executable, "-c", "import sys, mlplat; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_public_api_is_explicit():
    assert "connect" in mlplat.__all__
    assert all(not name.startswith("_") for name in mlplat.__all__)
    for name in mlplat.__all__:
        assert hasattr(mlplat, name), name
