"""The kernel tests' fixtures (lab_ok, lab_out), shared with these whole-cluster tests."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("kernel_conftest", Path(__file__).parent.parent / "kernel" / "conftest.py")
_kernel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_kernel)
lab_ok, lab_out = _kernel.lab_ok, _kernel.lab_out
