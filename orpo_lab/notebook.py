"""The notebooks' set-up, written once: their first code cell is

    from orpo_lab.notebook import MODE, PRESET, QUICK, RUNS, quiet  # ORPO_LAB_QUICK=1: quick mode
    quiet()

The test suite runs every notebook with ORPO_LAB_QUICK=1 (fewer steps, prompts and samples) and
ORPO_LAB_RUNS set to a temporary folder (tests/conftest.py's `notebook_env`); a reader's run leaves
both unset: full mode, and runs under ./runs. `html_table` shows the rows of `orpo_lab.rate_tables`.
"""

from __future__ import annotations

import html
import logging
import os
import warnings

QUICK = os.environ.get("ORPO_LAB_QUICK") == "1"
MODE = "quick" if QUICK else "full"  # ends the notebooks' run names: quick and full never mix
RUNS = os.environ.get("ORPO_LAB_RUNS", "runs")  # where notebooks 0, 4, 5 and 6 train
PRESET = "notebook-quick" if QUICK else "notebook"  # the settings notebooks 4 and 5 train with


def quiet() -> None:
    """Silence third-party notices that say nothing about ORPO: deprecation warnings of transformers
    and peft, bitsandbytes (imported by peft when installed) logging that an optional CPU kernel is
    missing, transformers' own notices (generation flags and the like) and its "Loading weights" bar
    on every model load."""
    # Imported here, not with the module: notebooks 1 and 2 load no model and need no transformers.
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def html_table(columns: list[str], rows: list[list]) -> str:
    """Rows (orpo_lab.rate_tables) as an HTML table under a header row, every cell escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
