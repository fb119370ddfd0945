"""Judged pass rates as rows of a table, for any number of models side by side: the app's evaluation
tables (base vs trained), `orpo-lab --evaluate`'s text (`as_text`) and notebooks 5 and 6 (base, SFT,
ORPO; four pipelines).

Pure functions of `evaluate.pass_rates` and `sampling.sampled_rates` results; no UI library, so a
notebook imports them without the app.
"""

from __future__ import annotations

import math
from pathlib import Path

EVAL_COLUMNS = [
    "family",
    "prompts (in-domain + ood)",
    "base (in-domain)",
    "trained (in-domain)",
    "base (ood)",
    "trained (ood)",
]
SAMPLED_COLUMNS = [
    "family",
    "domain",
    "samples",
    "base pass [95% CI]",
    "trained pass [95% CI]",
    "base rejected-like",
    "trained rejected-like",
]


def as_text(header: list[str], rows: list[list]) -> str:
    """Rows under their header in columns as wide as their widest cell: a table for a terminal."""
    cells = [header] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def percent(value: float | None) -> str:
    """A rate as a whole percentage; "-" for a group without prompts (NaN) or no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.0f}%"


def rate_with_interval(cell: dict) -> str:
    """A sampled rate and its 95% Wilson interval: "62% [41-79]"."""
    return f"{100 * cell['rate']:.0f}% [{100 * cell['low']:.0f}-{100 * cell['high']:.0f}]"


def _prompts(group: dict) -> str | int:
    # A summary written before the split counts was kept has only the total.
    if "n_ood" not in group:
        return group["n"]
    return f"{group['n_in_domain']} + {group['n_ood']}"


def pass_rate_table(summary: dict[str, dict]) -> list[list]:
    """{model: pass_rates(...)} -> a row per family (and "all"): family, its prompts ("3 + 2":
    in-domain + ood), then each model's in-domain rate, then each model's ood rate (evaluate_run's
    summary: base, then trained)."""
    models = list(summary)
    first = summary[models[0]]
    families = sorted(k for k in first if k != "all") + ["all"]
    return [
        [family, _prompts(first[family])]
        + [percent(summary[m][family]["in_domain"]) for m in models]
        + [percent(summary[m][family]["ood"]) for m in models]
        for family in families
    ]


def sampled_rate_table(
    sampled: dict | None,
    models: tuple[str, ...] | list[str] = ("base", "trained"),
    domains: tuple[str, ...] = ("in_domain", "ood"),
) -> list[list]:
    """{model: sampled_rates(...)} (evaluate_run's "sampled" part) -> a row per family (and "all")
    and domain with samples: family, domain, samples, each model's pass rate with its 95% interval,
    then each model's share of samples with the rejected replies' property."""
    if not sampled:
        return []
    families = sorted(k for k in sampled[models[0]] if k != "all") + ["all"]
    rows = []
    for family in families:
        for domain in domains:
            groups = [sampled[m][family][domain] for m in models]
            if not groups[0]["pass"]["n"]:
                continue
            rows.append(
                [family, domain.replace("_", "-"), groups[0]["pass"]["n"]]
                + [rate_with_interval(g["pass"]) for g in groups]
                + [percent(g["rejected_like"]["rate"]) for g in groups]
            )
    return rows


def evaluation_text(report: dict, generations: Path) -> str:
    """evaluate_run's report for a terminal: the greedy pass rates per family, then the sampled
    ones (as the app's evaluation tables show them), and where every answer is."""
    reused = " (the base model's reused)" if report["base_answers_reused"] else ""
    parts = [
        f"judged greedy answers to held-out prompts{reused}: the base model vs "
        f"{report['checkpoint']}, pass rate per family",
        as_text(EVAL_COLUMNS, pass_rate_table(report["summary"])),
    ]
    if "sampled" in report:
        s = report["sampled"]["settings"]
        parts += [
            f"sampled: {s['k']} per prompt, temperature {s['temperature']}, top-p {s['top_p']}, "
            f"seed {s['seed']}; pass rate [95% interval], share like the rejected replies",
            as_text(
                SAMPLED_COLUMNS,
                sampled_rate_table(report["sampled"], domains=("in_domain", "ood", "all")),
            ),
        ]
    return "\n".join(parts + [f"every answer and verdict: {generations}"])
