"""ORPO Lab in the browser: train (in a separate process) and chat with checkpoints side by side.

`python app.py` (or `make app`) serves it on 127.0.0.1:7860; a Hugging Face Space runs the same
file and gets 0.0.0.0. The app itself is `orpo_lab.ui.build_app`; importing this file starts
nothing (the `demo` attribute that `gradio app.py` reload mode asks for is built on first use).
"""

from __future__ import annotations

import argparse
import os

import spaces  # noqa: F401 - before torch: on ZeroGPU it patches torch when imported (else a no-op)

from orpo_lab.ui import build_app  # a Space runs this file from the checkout: no install needed


def __getattr__(name: str):
    if name == "demo":  # `gradio app.py` (hot reload) looks for a module-level demo
        return build_app(
            os.environ.get("ORPO_LAB_MODEL", "default"), os.environ.get("ORPO_LAB_RUNS", "runs")
        )
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="ORPO Lab: train with ORPO and chat with checkpoints."
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (0.0.0.0 exposes the app to your network)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--model",
        default=os.environ.get("ORPO_LAB_MODEL", "default"),
        help="base model: 'default', a model directory or a hub id",
    )
    parser.add_argument(
        "--runs-dir",
        default=os.environ.get("ORPO_LAB_RUNS", "runs"),
        help="folder of the training runs",
    )
    parser.add_argument(
        "--share", action="store_true", help="create a public gradio.live link (off by default)"
    )
    args = parser.parse_args(argv)
    app = build_app(args.model, args.runs_dir)
    host = "0.0.0.0" if os.environ.get("SPACE_ID") else args.host
    # Client-side rendering everywhere: a Space may set GRADIO_SSR_MODE, and the page the browser
    # tests drive is the client-rendered one.
    app.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=args.port, share=args.share, ssr_mode=False
    )


if __name__ == "__main__":
    main()
