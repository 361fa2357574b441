"""Re-pin the regression results (tests/data/regression/) from a fresh run on sample_data/.

Run deliberately, after benchmarks/accuracy.py shows a change is better::

    python tests/pin_regression.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = ROOT / "tests" / "data" / "regression"
IMAGE_COLS = ["image", "n_cells", "n_sabgal_positive", "fraction_sabgal_positive", "n_enlarged",
              "fraction_enlarged", "n_senescent", "fraction_senescent", "setup", "counterstain"]
CELL_COLS = ["image", "cell_id", "centroid_y", "centroid_x", "area_px", "xgal_od_p90", "sabgal_positive",
             "enlarged", "senescent"]


def run_sample(out: Path) -> int:
    from sabgal.cli import main

    return main(["run", str(ROOT / "sample_data"), "--out", str(out), "--workers", "1", "-q"])


def main() -> int:
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        rc = run_sample(out)
        if rc != 0:
            print(f"run failed with exit code {rc}", file=sys.stderr)
            return rc
        PIN.mkdir(parents=True, exist_ok=True)
        pd.read_csv(out / "images.csv")[IMAGE_COLS].to_csv(PIN / "images.csv", index=False, float_format="%.6g")
        pd.read_csv(out / "cells.csv")[CELL_COLS].to_csv(PIN / "cells.csv", index=False, float_format="%.6g")
    print(f"pinned {PIN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
