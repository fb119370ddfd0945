"""How long the cached default model takes to load: `python bench/load_default.py` (median of 5 runs).

Each run is a fresh process, so imports and the safetensors read are both counted, as a user sees them.
"""

import statistics
import subprocess
import sys

CODE = """
import time
t0 = time.perf_counter()
from orpo_lab.model import load_model
t1 = time.perf_counter()
model, tokenizer = load_model("default")
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""

if __name__ == "__main__":
    subprocess.run([sys.executable, "-m", "orpo_lab.model", "prepare"], check=True)
    imports, loads = [], []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", CODE], capture_output=True, text=True, check=True
        )
        a, b = map(float, out.stdout.split()[-2:])
        imports.append(a)
        loads.append(b)
    print(f"import orpo_lab.model: median {statistics.median(imports):.2f} s")
    print(f"load_model('default'): median {statistics.median(loads):.2f} s")
    print(
        f"total: median {statistics.median(a + b for a, b in zip(imports, loads, strict=True)):.2f} s"
    )
