"""Time to build the full-size Pengi models from their configuration (random init, nothing downloaded).

python benchmarks/bench_build.py
"""

from __future__ import annotations

import time

t0 = time.perf_counter()
import torch  # noqa: E402

from pengi_search.config import PengiConfig  # noqa: E402
from pengi_search.model import Pengi  # noqa: E402

t1 = time.perf_counter()
print(f"imports: {t1 - t0:.2f} s (torch {torch.__version__}, {torch.get_num_threads()} threads)")
for preset in ("base", "base_no_text_enc"):
    start = time.perf_counter()
    model = Pengi(PengiConfig.preset(preset))
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{preset:18s} built in {seconds:5.2f} s, {params:6.1f} M parameters")
    del model
