import os
import sys
from pathlib import Path

os.environ.setdefault("TINYSTORIES_NO_PROGRESS", "1")
# Tiny test models gain nothing from a second thread, and on a shared 2-core machine OpenMP's
# spinning threads made single tests 100x slower (45 s instead of 0.45 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))
