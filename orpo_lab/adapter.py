"""A checkpoint's LoRA adapter, shared: its files, a model card, a folder or a zip of them.

What is shared is the adapter alone (weights, adapter_config.json naming a loadable base model,
tokenizer files, README.md); the training state (optimizer, RNG) stays in the run folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from orpo_lab.checkpoint import TRAINING_STATE, adapter_checkpoint
from orpo_lab.rundir import CHECKPOINT_PREFIX, RunDir, checkpoint_step


def public_base_id(model: str) -> str:
    """The base model's name as others can load it: the hub id of the default model, else as given."""
    from orpo_lab.model import DEFAULT_HUB_ID, DEFAULT_MODEL

    return DEFAULT_HUB_ID if model == DEFAULT_MODEL else model


def held_out_at(checkpoint: Path) -> dict | None:
    """The run's last held-out evaluation at or before the checkpoint's step (its metrics.jsonl,
    two folders up), or None when there is none."""
    step = checkpoint_step(checkpoint.name) if checkpoint.name.startswith(CHECKPOINT_PREFIX) else 0
    evals = [
        r
        for r in RunDir(checkpoint.parent.parent).metrics()
        if r.get("kind") == "eval" and r.get("step", 0) <= step
    ]
    return evals[-1] if evals else None


def _hub_dataset(name: str) -> str | None:
    """`name` if it reads as a hub dataset id (owner/name, not a local path), else None."""
    if name in ("", "default") or Path(name).exists():
        return None
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def model_card(state: dict, base_id: str, held_out: dict | None = None) -> str:
    """README.md of a shared adapter: base model, data, ORPO settings, the last step's training
    metrics and the run's held-out evaluation (`held_out`, an eval record) when there is one."""
    cfg, metrics = state["config"], state.get("metrics") or {}
    method = method_words(cfg)
    dataset = _hub_dataset(str(cfg.get("dataset", "")))
    lines = [
        "---",
        f"base_model: {base_id}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "tags: [orpo, lora, orpo-lab]",
        *([f"datasets: [{dataset}]"] if dataset else []),
        "---",
        "",
        f"# LoRA adapter trained with ORPO Lab ({method})",
        "",
        f"- base model: `{base_id}`",
        f"- data: `{cfg.get('dataset')}` (split `{cfg.get('train_split')}`)",
        f"- steps: {state['step']} of batch {cfg.get('batch_size')} x {cfg.get('grad_accum')} "
        f"pairs, learning rate {cfg.get('learning_rate')} ({cfg.get('lr_scheduler')}, warmup "
        f"{cfg.get('warmup_steps')}), LoRA r {cfg.get('lora_r')} / alpha "
        f"{cfg.get('lora_alpha')} on {cfg.get('lora_target_modules')}",
        f"- ORPO settings: beta (lambda) {cfg.get('beta')}, NLL over the "
        f"{str(cfg.get('nll_scope', '')).replace('_', ' + ')}, max length "
        f"{cfg.get('max_length')} (prompt {cfg.get('max_prompt_length')}), seed {cfg.get('seed')}",
    ]
    if "loss" in metrics:
        lines.append(
            f"- at the last step: loss {metrics['loss']:.4g}, chosen log-prob "
            f"{metrics.get('logps/chosen', float('nan')):.4g}, rejected log-prob "
            f"{metrics.get('logps/rejected', float('nan')):.4g}"
        )
    if held_out:
        lines += [
            "",
            f"## Held-out evaluation (step {held_out.get('step')}, "
            f"{held_out.get('eval/pairs')} pairs)",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for key, label in HELD_OUT_ROWS.items():
            if isinstance(held_out.get(key), (int, float)):
                lines.append(f"| {label} | {held_out[key]:.4g} |")
    lines += [
        "",
        "Load it with peft: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)`.",
        "",
    ]
    return "\n".join(lines)


def method_words(cfg: dict) -> str:
    """The objective a run's config trained with, in words (beta 0 with ORPO is the SFT baseline)."""
    method = cfg.get("method", "orpo")
    if method == "dpo":
        start = cfg.get("init_checkpoint") or "the base model"
        return f"DPO, beta {cfg.get('dpo_beta')}, from {start}, reference {cfg.get('ref_checkpoint') or 'its start'}"
    if method == "prob_ratio":
        return f"probability ratio (ORPO paper, section 7.1), lambda = {cfg.get('beta')}"
    if method == "sft" or not cfg.get("beta"):
        return "SFT (beta = 0, the baseline)"
    return f"ORPO, beta (lambda) = {cfg['beta']}"


HELD_OUT_ROWS = {
    "eval/accuracy": "preference accuracy (chosen mean log-prob above rejected)",
    "eval/logps_chosen": "mean log-prob of the chosen responses",
    "eval/logps_rejected": "mean log-prob of the rejected responses",
    "eval/log_odds_chosen": "mean log odds ratio, log(odds chosen / odds rejected)",
    "eval/log_odds_ratio": "mean log sigmoid of the log odds ratio (-L_OR)",
}


def adapter_files(checkpoint: str | Path) -> dict[str, Path | str]:
    """What a shared adapter is made of: file name -> a file of the checkpoint (weights, tokenizer)
    or text (adapter_config.json naming a loadable base model, the model card README.md). The
    training state (optimizer, RNG) stays in the run folder."""
    checkpoint, state = adapter_checkpoint(checkpoint)
    base_id = public_base_id(state["config"]["model"])
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = base_id
    files: dict[str, Path | str] = {
        path.name: path
        for path in sorted(checkpoint.iterdir())
        if path.is_file() and path.name not in TRAINING_STATE + ("adapter_config.json", "README.md")
    }
    files["adapter_config.json"] = json.dumps(adapter_config, indent=2)
    files["README.md"] = model_card(state, base_id, held_out_at(checkpoint))
    return files


def write_adapter(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """`adapter_files` written into the folder `out_dir` (created; must not exist)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    for name, content in adapter_files(checkpoint).items():
        if isinstance(content, Path):
            shutil.copyfile(content, out_dir / name)
        else:
            (out_dir / name).write_text(content)
    return out_dir


def export_adapter(checkpoint: str | Path, target: str | Path) -> Path:
    """A zip of the PEFT adapter alone (`adapter_files`): weights, adapter_config.json naming a
    loadable base model, tokenizer files and a model card."""
    files = adapter_files(checkpoint)
    target = Path(target).with_suffix(".zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            if isinstance(content, Path):
                zf.write(content, name)
            else:
                zf.writestr(name, content)
    os.replace(tmp, target)
    return target
