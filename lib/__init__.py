import os

# Threads that finish an op early sleep instead of spinning: on a busy machine a spinning
# thread takes the core its partner needs (a DCGAN step: 4x the CPU time, 4x the wall time).
# OpenMP reads this once, when torch loads it, and every torch import in lib comes after this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
