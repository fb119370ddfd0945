"""Judge generations: base model vs a trained checkpoint on held-out prompts, pass rate per family.

The default dataset has an automatic judge per family (`orpo_lab.default_judges.JUDGES`); a run's
report goes to `RUN_DIR/generations.json`, next to its metrics. Greedy answers always; with
`samples=k`, also k sampled answers per prompt (`orpo_lab.sampling`): pass rates and rejected-like
rates with 95% intervals.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from orpo_lab.answers import base_answers, generate_answers
from orpo_lab.checkpoint import CheckpointError, read_state
from orpo_lab.config import TrainConfig, upgraded
from orpo_lab.default_judges import JUDGES
from orpo_lab.model import attach_adapter, load_model, resolve_model
from orpo_lab.rundir import RunDir
from orpo_lab.sampling import judge_samples, sample_answers, sampled_rates
from orpo_lab.splits import load_config_splits


def pass_rates(records: list[dict], passed: list[bool]) -> dict[str, dict[str, float]]:
    """Pass rate per family, split into in-domain and out-of-domain (kinds of prompt never trained on)."""
    table: dict[str, dict[str, list[bool]]] = {}
    for rec, ok in zip(records, passed, strict=True):
        for key in (rec["family"], "all"):
            group = table.setdefault(key, {"in_domain": [], "ood": [], "all": []})
            group["ood" if rec.get("ood") else "in_domain"].append(ok)
            group["all"].append(ok)
    return {
        fam: {k: (sum(v) / len(v) if v else float("nan")) for k, v in g.items()}
        | {"n": len(g["all"]), "n_in_domain": len(g["in_domain"]), "n_ood": len(g["ood"])}
        for fam, g in table.items()
    }


def stratified(records: list[dict], n: int) -> list[dict]:
    """At most `n` records (all when n is 0), taken in turn from each (family, ood) group."""
    if not n or n >= len(records):
        return records
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["family"], bool(r.get("ood"))), []).append(r)
    picked, turn = [], 0
    while len(picked) < n:
        picked += [g[turn] for g in groups.values() if turn < len(g)][: n - len(picked)]
        turn += 1
    return picked


def judge_model(
    model,
    tokenizer,
    records: list[dict],
    max_new_tokens: int = 64,
    desc: str | None = None,
    batch_size: int = 16,
):
    """(answers, passed) of one model on the records' prompts, each judged by its family's judge;
    `batch_size` prompts per generate call (a progress bar under `desc` moves once per call)."""
    prompts = [r["prompt"] for r in records]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size, desc)
    return answers, judged(records, answers)


def judged(records: list[dict], answers: list[str]) -> list[bool]:
    """Each answer scored by its record's family judge."""
    return [bool(JUDGES[r["family"]](r, a)) for r, a in zip(records, answers, strict=True)]


def _judged_records(run: RunDir, checkpoint: Path, max_prompts: int) -> tuple[list, TrainConfig]:
    # The run's own held-out pairs (its test split, eval_dataset or carve): never its training pairs.
    cfg = TrainConfig.from_dict(upgraded(read_state(checkpoint)["config"]))
    _, held_out, info = load_config_splits(cfg)
    if held_out is None:
        raise ValueError(f"The run has no held-out pairs to judge ({info['held_out']}).")
    if "family" not in held_out.column_names:
        raise ValueError(
            "Generation judging needs a 'family' column with a judge per family "
            f"({', '.join(JUDGES)}): the default dataset has one, this dataset does not."
        )
    return stratified([r for r in held_out if r["family"] in JUDGES], max_prompts), cfg


def _tuned_model(base, checkpoint: Path, cfg: TrainConfig):
    if (checkpoint / "adapter_config.json").is_file():
        # Merged for generation: the same outputs, without LoRA's extra matmuls on every token.
        return attach_adapter(base, checkpoint).merge_and_unload()
    return load_model(str(checkpoint), cfg.device, cfg.precision, cfg.trust_remote_code)[0]


def evaluate_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    max_prompts: int = 0,
    max_new_tokens: int = 64,
    samples: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sample_seed: int = 0,
    precision: str | None = None,
) -> dict:
    """Base model vs the run's last checkpoint on the held-out split, judged; writes generations.json.

    The base model's answers are kept beside the runs (`base_answers_file`), so evaluating a
    second run of the same folder generates only for its checkpoint.

    `max_prompts`: at most that many held-out prompts, taken in turn from every family (0 = all).
    `samples`: also draw that many answers per prompt at `temperature` and `top_p`, seeded with
    `sample_seed` (`orpo_lab.sampling.sample_answers`); the report's "sampled" then holds, for
    base and trained, pass and rejected-like rates with 95% Wilson intervals (`sampled_rates`),
    and each generation its samples. 0: greedy only.
    `precision`: what to generate in ("fp32", "bf16", ...); None: the run's own setting (a run
    trained with "auto" generates in float32 on a CPU, whatever it trained in).
    """
    if samples < 0 or (samples and (temperature <= 0 or not 0 < top_p <= 1)):
        raise ValueError(
            f"Sampled evaluation needs samples >= 0, a temperature > 0 and top_p in (0, 1]; got "
            f"samples {samples}, temperature {temperature}, top_p {top_p} (samples 0 evaluates "
            "greedy answers only)."
        )
    sampling = (
        dict(
            k=int(samples),
            temperature=float(temperature),
            top_p=float(top_p),
            seed=int(sample_seed),
        )
        if samples
        else None
    )
    run = RunDir(run_dir)
    if checkpoint is None and run.latest_checkpoint() is None:
        raise CheckpointError(
            f"{run.path} has no checkpoint to evaluate (expected checkpoints/step-*)."
        )
    checkpoint = Path(checkpoint or run.latest_checkpoint())
    records, cfg = _judged_records(run, checkpoint, max_prompts)
    if precision is not None:
        cfg = replace(cfg, precision=precision)
    base, tokenizer = load_model(cfg.model, cfg.device, cfg.precision, cfg.trust_remote_code)
    prompts, source = [r["prompt"] for r in records], resolve_model(cfg.model)
    base_said, reused = base_answers(
        run.path.parent, base, tokenizer, source, prompts, max_new_tokens
    )
    base_pass = judged(records, base_said)
    if sampling:
        base_samples, _ = base_answers(
            run.path.parent, base, tokenizer, source, prompts, max_new_tokens, sampling
        )
    tuned = _tuned_model(base, checkpoint, cfg)
    tuned_answers, tuned_pass = judge_model(
        tuned, tokenizer, records, max_new_tokens, checkpoint.name
    )
    report = {
        "checkpoint": str(checkpoint),
        "base_answers_reused": reused,  # the base model's answers came from BASE_ANSWERS_DIR
        "summary": {
            "base": pass_rates(records, base_pass),
            "trained": pass_rates(records, tuned_pass),
        },
        "generations": [
            {
                "family": r["family"],
                "ood": r.get("ood", False),
                "prompt": r["prompt"],
                "base": b,
                "base_pass": bp,
                "trained": t,
                "trained_pass": tp,
            }
            for r, b, bp, t, tp in zip(
                records, base_said, base_pass, tuned_answers, tuned_pass, strict=True
            )
        ],
    }
    if sampling:
        tuned_samples = sample_answers(
            tuned,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            desc=f"{checkpoint.name}, sampled",
            **sampling,
        )
        _add_samples(
            report,
            records,
            sampling | {"max_new_tokens": max_new_tokens},
            {"base": base_samples, "trained": tuned_samples},
        )
    run.generations_path.write_text(json.dumps(report, indent=1))
    return report


def _add_samples(report: dict, records: list[dict], settings: dict, samples: dict) -> None:
    # report["sampled"]: the settings and each model's rates; each generation: its judged samples.
    report["sampled"] = {"settings": settings}
    for model, texts in samples.items():
        judged_samples = judge_samples(records, texts)
        report["sampled"][model] = sampled_rates(records, judged_samples)
        for generation, judged_texts in zip(report["generations"], judged_samples, strict=True):
            generation[f"{model}_samples"] = judged_texts
