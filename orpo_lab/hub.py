"""Share a finished or stopped run's adapter on the Hugging Face hub.

What is uploaded is what the adapter download holds (`adapter.adapter_files`): the PEFT adapter,
adapter_config.json naming a loadable base model, the tokenizer files and a model card with the
base model id, the data, the ORPO settings and the run's last held-out evaluation. The repository
is private unless asked otherwise. A missing token or an unreachable hub is a HubError that says
what to do; the run folder is never changed (the files are staged in a temporary folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from orpo_lab.adapter import write_adapter
from orpo_lab.checkpoint import CheckpointError
from orpo_lab.rundir import ACTIVE, RunDir

NO_TOKEN = (
    "No Hugging Face token: log in with `hf auth login` (or set HF_TOKEN to a token with write "
    "access), then push again. Nothing was uploaded."
)


class HubError(ValueError):
    """The adapter could not be pushed; the message says why and what to do. Nothing changed."""


def shareable_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint to share: `checkpoint` (a name like step-000060, or a path), else the run's
    last one. Refused while the run is still queued or running, or when it has none."""
    run = RunDir(run_dir)
    if not run.exists():
        raise HubError(f"{run.path} is not a run folder (no config.yaml): pass runs/NAME.")
    state = run.read_status()["status"]
    if state in ACTIVE:
        raise HubError(f"Run {run.name} is still {state}: stop it or let it finish, then push.")
    if checkpoint is None:
        latest = run.latest_checkpoint()
        if latest is None:
            raise HubError(f"Run {run.name} has no checkpoint to push (it saved none).")
        return latest
    path = Path(checkpoint)
    path = path if path.is_dir() else run.checkpoints_dir / str(checkpoint)
    if path not in run.checkpoints():
        names = ", ".join(p.name for p in run.checkpoints()) or "none"
        raise HubError(f"{checkpoint} is not a checkpoint of run {run.name} (it has: {names}).")
    return path


def stage(checkpoint: Path, folder: str | Path) -> Path:
    """The files that `push_to_hub` uploads, written into `folder` (a new folder)."""
    try:
        return write_adapter(checkpoint, folder)
    except CheckpointError as err:  # a fully fine-tuned run: no adapter to share this way
        raise HubError(str(err)) from err


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    checkpoint: str | Path | None = None,
    private: bool = True,
    token: str | None = None,
) -> str:
    """Upload a run's adapter (its last checkpoint, or `checkpoint`) to the model repository
    `repo_id` ("name" or "owner/name"; created if missing); returns the repository's URL."""
    import huggingface_hub
    from huggingface_hub import HfApi

    repo_id = (repo_id or "").strip()
    if not repo_id or repo_id.count("/") > 1 or " " in repo_id:
        raise HubError(f"Repository id {repo_id!r} is not 'name' or 'owner/name'.")
    source = shareable_checkpoint(run_dir, checkpoint)
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubError(NO_TOKEN)
    with tempfile.TemporaryDirectory(prefix="orpo-lab-push-") as tmp:
        folder = stage(source, Path(tmp) / "adapter")
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=url.repo_id,
                folder_path=folder,
                repo_type="model",
                commit_message=f"ORPO Lab: {RunDir(run_dir).name}, {source.name}",
            )
        except Exception as err:  # offline mode, no network, a refused token: all say the same
            raise HubError(
                f"The hub could not take the upload ({type(err).__name__}: {str(err)[:300]}). "
                "Check the network, the token's write access and the repository id; the run "
                "folder is unchanged."
            ) from err
    return str(url)
