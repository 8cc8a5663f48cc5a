import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TINYSTORIES_NO_PROGRESS", "1")
# Tiny test models gain nothing from a second thread, and on a shared 2-core machine OpenMP's
# spinning threads made single tests 100x slower (45 s instead of 0.45 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _backend_registry_restored():
    """A backend a test registers (tests/fake_llm.py) is gone when the test ends."""
    from tinystories.llm.registry import registry_restored

    with registry_restored():
        yield
