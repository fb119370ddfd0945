"""Public datasets at their real size: time and memory from the command's start to the first step.

Writes its own files (bench/scale_data.py): 60,000 rows in UltraFeedback-binarized's layout and
10,000 in Capybara's multi-turn layout. For each, in fresh processes:
  new   `orpo-lab --dataset FILE --max-steps 2 --batch-size 2 --max-length 1024
        --max-prompt-length 512 --eval-every end --save-every end` with an empty data cache and no
        precision measurement of this setup (a machine's first run: `precision=auto` probes
        float32 and bf16 once; the default model already prepared, as after `make model`);
  cold  the same with the data cache emptied again (the measurement kept);
  warm  the same command again (the cache from the cold run);
  trl   TRL's ORPOTrainer.__init__ on the same file, tokenizer and lengths (its dataset
        preparation), with dataset_num_proc = the cores, as ours uses.
"prepare" is cold minus warm: the preparation itself, compared with TRL's `__init__`; the
whole commands are compared too (TRL: its process start to the end of `__init__`).
"first step" is when step 1 began: the first train record's arrival minus its step time. RSS is
the whole process tree's (workers included), sampled every 0.1 s: over the whole command, and up
to step 1 (preparation and model loading); "model" is the RSS of a process that has only
loaded the model.

    .venv/bin/python bench/data_scale.py [--rows 60000] [--capybara-rows 10000] [--skip ours trl capybara bad]

"prepare_alone": the preparation in a process without the model (cold), its time and peak
memory (proportional set size: the forked workers' shared pages counted once)
(with --skip ours: only that, for each file).

Then a bad row at line 45,000 of the 60k file: refused with file, line and field (several processes),
nothing cached; skip_bad_rows drops and counts it (--only-bad runs this part alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale_data import write_capybara, write_ultrafeedback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = ["--max-length", "1024", "--max-prompt-length", "512"]


def tree_rss(pid: int, proportional: bool = False) -> int:
    """Bytes resident in `pid` and every descendant (from /proc). `proportional`: their
    proportional set sizes (pages that forked workers share with their parent count once, not once
    per process); slower to read (the kernel walks the page tables), so only where workers are."""
    total, todo = 0, [pid]
    source, field = ("smaps_rollup", "Pss:") if proportional else ("status", "VmRSS")
    while todo:
        p = todo.pop()
        try:
            text = Path(f"/proc/{p}/{source}").read_text()
            total += int(next(ln for ln in text.splitlines() if ln.startswith(field)).split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total * 1024


def watch(
    command: list[str], env: dict, until=None, timeout: float = 1800, proportional: bool = False
) -> dict:
    """Run `command`; its wall time, peak tree RSS, and the time `until(started)` first returned a
    number (seconds since start), polled every 0.1 s."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    peak, before, mark = 0, 0, None
    while proc.poll() is None:
        rss = tree_rss(proc.pid, proportional)
        peak = max(peak, rss)
        if until and mark is None:
            before = max(before, rss)  # data preparation, model loading: up to step 1
            mark = until(began)
        if time.perf_counter() - began > timeout:
            proc.kill()
        time.sleep(0.1)
    reader.join()
    wall = time.perf_counter() - began
    if until and mark is None:
        mark = until(began)
    if proc.returncode:
        raise SystemExit(f"{command} failed:\n{''.join(out)[-3000:]}")
    return {
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak / 2**30, 2),
        "peak_rss_to_step1_gb": round(before / 2**30, 2),
        "first_step_s": None if mark is None else round(mark, 1),
        "output": "".join(out),
    }


def first_step(metrics: Path):
    """until(): seconds from the start to the beginning of step 1, once its record is written."""

    def until(began: float):
        if not metrics.is_file():
            return None
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "train":
                return time.perf_counter() - began - record["step_s"]
        return None

    return until


def cache_with_model(cache: Path) -> Path:
    """A cache folder for the runs: its data cache is the bench's own (emptied for a cold run), its
    default model the one `make model` prepared, as on the machine of a user who ran the README's
    commands (converting the embedded GGUF is a one-time cost of its own, not the data's)."""
    from orpo_lab.model import default_model_dir

    model = default_model_dir()
    if not (model / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "orpo_lab.model", "prepare"], check=True)
    cache.mkdir(parents=True, exist_ok=True)
    link = cache / model.name
    if not link.exists():
        link.symlink_to(model, target_is_directory=True)
    return cache


def ours(path: Path, cache: Path, runs: Path, name: str) -> dict:
    env = {**os.environ, "ORPO_LAB_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "orpo_lab.cli",
        "--dataset",
        str(path),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        *LENGTHS,
        "--eval-every",
        "end",
        "--save-every",
        "end",
        "--max-eval-pairs",
        "8",  # the evaluation after step 2: not what is measured
        "--output-dir",
        str(runs),
        "--run-name",
        name,
    ]
    result = watch(command, env, first_step(runs / name / "metrics.jsonl"))
    started = next(
        json.loads(ln)
        for ln in (runs / name / "metrics.jsonl").read_text().splitlines()
        if json.loads(ln).get("event") == "started"
    )
    result["truncation"] = started["truncation"]
    result["data_cache"] = started["data_cache"]
    result["precision"] = started["precision"]
    result["probe_s"] = (started.get("autotune") or {}).get("probe_s")  # precision="auto" measuring
    return result


TRL_PREPARE = """
import sys, time, os
import datasets
from trl.experimental.orpo import ORPOConfig, ORPOTrainer
from orpo_lab.model import load_model
model, tok = load_model("default", device="cpu", precision="fp32")
t = time.perf_counter()
data = datasets.load_dataset("json", data_files=sys.argv[1], split="train")
# TRL takes prompt/chosen/rejected alone (UltraFeedback's `messages` etc. are refused): drop the rest
data = data.select_columns([c for c in ("prompt", "chosen", "rejected") if c in data.column_names])
args = ORPOConfig(output_dir=sys.argv[2], max_length=1024,  # TRL 1.x has no prompt budget
                  per_device_train_batch_size=2, use_cpu=True, report_to="none",
                  dataset_num_proc=os.cpu_count(), remove_unused_columns=False)
ORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
print("TRL_PREPARE_S", time.perf_counter() - t)
"""


def trl(path: Path, work: Path) -> dict:
    """TRL's preparation, cold: its `datasets` cache (maps cached by fingerprint) emptied first."""
    subprocess.run(["rm", "-rf", str(work / "hf-datasets")], check=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf-datasets"), "PYTHONUNBUFFERED": "1"}
    result = watch([sys.executable, "-c", TRL_PREPARE, str(path), str(work / "trl-out")], env)
    line = next(ln for ln in result["output"].splitlines() if ln.startswith("TRL_PREPARE_S"))
    result["prepare_s"] = round(float(line.split()[1]), 1)
    return result


PREPARE_ALONE = """
import sys, time
from orpo_lab.config import TrainConfig
from orpo_lab.model import load_tokenizer
from orpo_lab.prepared import check_data, prepare_data
t = time.perf_counter()
cfg = TrainConfig(dataset=sys.argv[1], max_length=1024, max_prompt_length=512, max_eval_pairs=8)
check_data(cfg)  # what the CLI does before the run, then the run's own preparation
prepare_data(cfg, load_tokenizer())
print("PREPARED_S", time.perf_counter() - t)
"""


def prepare_alone(path: Path, work: Path) -> dict:
    """The preparation alone in a fresh process (cold data cache): its wall time and the peak RSS
    of the process and its workers, against a process that has loaded the model (model_rss)."""
    cache = cache_with_model(work / "cache-prepare")
    subprocess.run(["rm", "-rf", str(cache / "data")], check=True)
    result = watch(
        [sys.executable, "-c", PREPARE_ALONE, str(path)],
        {**os.environ, "ORPO_LAB_CACHE": str(cache)},
        proportional=True,
    )
    line = next(ln for ln in result.pop("output").splitlines() if ln.startswith("PREPARED_S"))
    return {
        "prepare_s": round(float(line.split()[1]), 1),
        "wall_s": result["wall_s"],
        "peak_rss_gb": result["peak_rss_gb"],
    }


BAD_ROW = """
import sys, time, warnings
from orpo_lab.config import TrainConfig
from orpo_lab.sources import PreferenceDataError
from orpo_lab.prepared import check_data
t = time.perf_counter()
try:
    check_data(TrainConfig(dataset=sys.argv[1]))
except PreferenceDataError as err:
    print("REFUSED", round(time.perf_counter() - t, 1), str(err).splitlines()[1].strip())
with warnings.catch_warnings(record=True):
    info = check_data(TrainConfig(dataset=sys.argv[1], skip_bad_rows=True))
print("SKIPPED", info["bad_rows_skipped"], info["train_pairs"] + info["held_out_pairs"])
"""


def bad_row(path: Path, work: Path, line: int = 45_000) -> dict:
    """The file with line `line` missing its `rejected`: refused with file/line/field, nothing
    cached; then skip_bad_rows drops and counts it."""
    bad = work / f"bad-{path.name}"
    with path.open() as src, bad.open("w") as out:
        for number, text in enumerate(src, start=1):
            if number == line:
                row = json.loads(text)
                row.pop("rejected")
                text = json.dumps(row) + "\n"
            out.write(text)
    cache = work / "cache-bad"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    env = {**os.environ, "ORPO_LAB_CACHE": str(cache)}
    result = watch([sys.executable, "-c", BAD_ROW, str(bad)], env)
    lines = result.pop("output").splitlines()
    return {
        "refused": next(ln for ln in lines if ln.startswith("REFUSED")),
        "skipped": next(ln for ln in lines if ln.startswith("SKIPPED")),
        "wall_s": result["wall_s"],
    }


def model_rss() -> float:
    code = "from orpo_lab.model import load_model; load_model('default', device='cpu'); import time; time.sleep(2)"
    return watch([sys.executable, "-c", code], dict(os.environ))["peak_rss_gb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--capybara-rows", type=int, default=10_000)
    parser.add_argument(
        "--workdir", default="", help="keep the files here (default: a temp folder)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "trl", "capybara", "bad"])
    parser.add_argument("--only-bad", action="store_true", help="only the bad-row check")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    files = {"ultrafeedback": work / f"uf{args.rows}.jsonl"}
    if "capybara" not in args.skip:
        files["capybara"] = work / f"capybara{args.capybara_rows}.jsonl"
    for name, path in files.items():
        if not path.is_file():
            make = write_ultrafeedback if name == "ultrafeedback" else write_capybara
            make(path, args.rows if name == "ultrafeedback" else args.capybara_rows)
    report = {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "versions": _versions(),
        "model_rss_gb": model_rss(),
    }
    for name, path in files.items():
        if "ours" in args.skip:
            report[name] = {"prepare_alone": prepare_alone(path, work)}
            print(json.dumps({name: report[name]}), flush=True)
            continue
        cache = cache_with_model(work / f"cache-{name}")
        # A machine that never ran this setup: no data cache and no precision measurement.
        subprocess.run(
            ["rm", "-rf", str(cache / "data"), str(cache / "autotune.json"), str(work / "runs")],
            check=True,
        )
        new = ours(path, cache, work / "runs", f"{name}-new")
        print(name, "new", {k: v for k, v in new.items() if k != "output"}, flush=True)
        # Cold: the data cache emptied again; the precision measured by the run above is kept.
        subprocess.run(["rm", "-rf", str(cache / "data")], check=True)
        cold = ours(path, cache, work / "runs", f"{name}-cold")
        print(name, "cold", {k: v for k, v in cold.items() if k != "output"}, flush=True)
        warm = ours(path, cache, work / "runs", f"{name}-warm")
        print(name, "warm", {k: v for k, v in warm.items() if k != "output"}, flush=True)
        entry = {
            "file_mb": round(path.stat().st_size / 2**20),
            "new": new,
            "cold": cold,
            "warm": warm,
        }
        # The preparation itself: what the cold run does that the warm one (cache hit) does not.
        entry["prepare_s"] = round(cold["first_step_s"] - warm["first_step_s"], 1)
        entry["prepare_alone"] = prepare_alone(path, work)
        if "trl" not in args.skip:
            entry["trl"] = trl(path, work)
            entry["x_trl_prepare"] = round(entry["trl"]["prepare_s"] / entry["prepare_s"], 2)
            entry["x_trl_command"] = round(entry["trl"]["wall_s"] / cold["first_step_s"], 2)
        for part in ("new", "cold", "warm", "trl"):
            entry.get(part, {}).pop("output", None)
        report[name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
    if "bad" not in args.skip:
        report["bad_row"] = bad_row(files["ultrafeedback"], work)
    print(json.dumps(report, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _versions() -> dict:
    import importlib.metadata as md

    names = ("torch", "transformers", "datasets", "tokenizers", "trl")
    return {n: md.version(n) for n in names if _installed(n)}


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    main()
