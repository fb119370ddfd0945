"""Model names, and ORPO Lab's cache folder, without importing torch or transformers: `orpo-lab`
and the app refuse a missing model folder or a typo of "default" at once, before the data is read
or anything heavy loads, and the data cache is found without loading the model code
(`orpo_lab.model` resolves and loads; it re-exports these names)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

DEFAULT_MODEL = "default"


def cache_dir() -> Path:
    """Where ORPO Lab keeps prepared models and data: $ORPO_LAB_CACHE, else
    $XDG_CACHE_HOME/orpo_lab."""
    if os.environ.get("ORPO_LAB_CACHE"):
        return Path(os.environ["ORPO_LAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "orpo_lab"


class ModelLoadError(ValueError):
    """A model name or path that cannot be loaded; the message says what was expected."""


def checked_name(name: str) -> str:
    """A model name other than "default" as `from_pretrained` takes it: an existing model folder
    (holding config.json: a transformers model directory) or a hub id ("org/name"). Refused at
    once: a name that looks like a path ("./x", "a/b/c") with nothing there, or a typo of
    "default" ("defualt"), where the hub would retry for a minute offline and then blame the
    network."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"Model path {path} is a file; expected a model directory with config.json and weights "
                f"(*.safetensors), as written by `save_pretrained`."
            )
        if not (path / "config.json").is_file():
            if (path / "adapter_config.json").is_file():
                raise ModelLoadError(
                    f"Model path {path} holds a LoRA adapter, not a model: load its base model and the "
                    f"adapter on top (the app's chat tab does this), or export a merged model first."
                )
            raise ModelLoadError(
                f"Model path {path} has no config.json; expected a model directory with config.json and "
                f"weights (*.safetensors), as written by `save_pretrained`."
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip():
        # Looks like a path, but nothing is there: a hub look-up would only hide the typo.
        raise ModelLoadError(
            f"Model path {name!r} does not exist. Expected 'default', a model directory with "
            f"config.json and weights (*.safetensors), or a hub id such as 'org/name'."
        )
    if "/" not in name and difflib.get_close_matches(name.lower(), [DEFAULT_MODEL], cutoff=0.7):
        # A hub look-up of "defualt" retries for a minute, then blames the network.
        raise ModelLoadError(
            f"Model {name!r} is not a folder here: did you mean {DEFAULT_MODEL!r}, the embedded "
            "SmolLM2-135M-Instruct? (A model from the hub is named 'owner/name'.)"
        )
    return name
