"""A CSV tracker for Accelerate (``log_with=[CSVTracker(...)]``): one row per logged step,
a column per metric; the header grows when new metrics appear (stage 2 after its L1
warm-up)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from accelerate.tracking import GeneralTracker

__all__ = ["CSVTracker", "read_csv_log"]


class CSVTracker(GeneralTracker):
    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir):
        super().__init__()
        self.run_name = run_name
        self.dir = Path(logging_dir)
        self.path = self.dir / "train_log.csv"
        self.fields: list[str] = []
        self.rows: list[dict] = []

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            self.rows = read_csv_log(self.path)
            self.fields = list(self.rows[0].keys()) if self.rows else []

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "hparams.json").write_text(json.dumps(values, indent=2, default=str) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run redoes those steps)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        self._rewrite()

    def _rewrite(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields or ["step"], restval="")
            w.writeheader()
            w.writerows(self.rows)

    def log(self, values: dict, step: int | None = None, **kwargs):
        row = {"step": step, **{k: (float(v) if hasattr(v, "__float__") else v) for k, v in values.items()}}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new or not self.path.is_file():
            self.fields += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields, restval="").writerow(row)

    def finish(self):
        pass


def read_csv_log(path) -> list[dict]:
    """Rows of a CSV log as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
