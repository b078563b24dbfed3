"""Run reports: `build_report(runs, output)` writes one self-contained HTML file; `write_val_predictions(run_dir)`
writes RUN/predictions/val.jsonl (the kept model's validation predictions, which the report analyses)."""
from tuneforge.report.build import build_report
from tuneforge.report.predictions import PREDICTIONS_FILE, read_predictions, write_val_predictions

__all__ = ["build_report", "write_val_predictions", "read_predictions", "PREDICTIONS_FILE"]
