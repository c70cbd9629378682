"""The two backends are written independently, so comparing them checks something."""

import subprocess
import sys


def modules_after_import(module):
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_numpy_reference_imports_no_torch():
    loaded = modules_after_import("bnlab.numpy")
    assert "bnlab.numpy" in loaded
    assert "torch" not in loaded


def test_torch_backend_does_not_use_the_numpy_reference():
    loaded = modules_after_import("bnlab.torch")
    assert "bnlab.torch.functional" in loaded
    assert not any(name.startswith("bnlab.numpy") for name in loaded)
