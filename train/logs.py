"""The run's logs: the 'train' logger (console through tqdm, then also train.log), the CSV logs (train.csv,
val.csv) and TensorBoard (tb/, where it is installed).

Records logged before the run folder may be written (the checks of a run that is refused) go to the console at
once and are held; `log_to_file` writes them to train.log first when the folder is ready.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.atomic import atomic_write

log = logging.getLogger("train")


class CsvLog:
    """Append-only CSV; on resume, rows logged after the resumed iteration (by a killed run) are dropped."""

    def __init__(self, path: Path, fields: list[str], resume_from: int | None) -> None:
        self.path, self.fields = path, fields
        rows: list[dict[str, str]] = []
        if resume_from is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iter"]) <= resume_from]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)

        atomic_write(path, write)

    def add(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


class _Held(logging.Handler):
    """Keeps the records logged before the run folder may be written, for train.log."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(main: bool) -> None:
    """Log to the console at once (rank 0 everything, other ranks warnings only, e.g. unreadable images) and hold
    the records for train.log until `log_to_file`."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.INFO if main else logging.WARNING)
    log.addHandler(console)
    log.addHandler(_Held())
    log.propagate = False


def log_to_file(out: Path | None) -> None:
    """From now on also log to `out`/train.log (None: other ranks, no file), with the records held so far."""
    held = [h for h in log.handlers if isinstance(h, _Held)]
    for h in held:
        log.removeHandler(h)
    if out is None:
        return
    file = logging.FileHandler(out / "train.log", encoding="utf-8")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in held:
        for record in h.records:
            file.handle(record)
    log.addHandler(file)


def open_tensorboard(out: Path, start_iter: int) -> Any:
    """A TensorBoard SummaryWriter on `out`/tb (events after `start_iter` of a resumed run purged), or None with a
    message where TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("TensorBoard is not installed (pip install tensorboard): logging to CSV only")
        return None
    return SummaryWriter(str(out / "tb"), purge_step=start_iter or None)
