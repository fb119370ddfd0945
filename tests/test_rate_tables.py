"""The judged-rate tables (orpo_lab.rate_tables): the app's base-vs-trained rows and the notebooks'
rows of three or four models, from hand-made pass_rates / sampled_rates results."""

from orpo_lab.evaluate import pass_rates
from orpo_lab.rate_tables import pass_rate_table, percent, rate_with_interval, sampled_rate_table
from orpo_lab.sampling import sampled_rates

# Two families, each one in-domain and one ood prompt.
RECORDS = [
    {"family": "concise", "ood": False},
    {"family": "concise", "ood": True},
    {"family": "arithmetic", "ood": False},
    {"family": "arithmetic", "ood": True},
]


def test_pass_rate_table_puts_each_model_in_its_columns():
    summary = {
        "base": pass_rates(RECORDS, [False, False, True, False]),
        "SFT": pass_rates(RECORDS, [True, False, True, True]),
        "ORPO": pass_rates(RECORDS, [True, True, True, True]),
    }
    # family, prompts (in-domain + ood), in-domain base/SFT/ORPO, ood base/SFT/ORPO; families
    # sorted, "all" last.
    assert pass_rate_table(summary) == [
        ["arithmetic", "1 + 1", "100%", "100%", "100%", "0%", "100%", "100%"],
        ["concise", "1 + 1", "0%", "100%", "100%", "0%", "0%", "100%"],
        ["all", "2 + 2", "50%", "100%", "100%", "0%", "50%", "100%"],
    ]
    # A summary saved before the split counts were kept: the total, as it was shown then.
    split = ("n_in_domain", "n_ood")
    old = {
        m: {f: {k: v for k, v in g.items() if k not in split} for f, g in rates.items()}
        for m, rates in summary.items()
    }
    assert [row[1] for row in pass_rate_table(old)] == [2, 2, 4]


def test_a_group_without_prompts_reads_as_a_dash():
    only_in_domain = pass_rates(RECORDS[:1], [True])  # no ood prompt: its rate is NaN
    assert pass_rate_table({"base": only_in_domain, "trained": only_in_domain}) == [
        ["concise", "1 + 0", "100%", "100%", "-", "-"],
        ["all", "1 + 0", "100%", "100%", "-", "-"],
    ]
    assert percent(None) == "-" and percent(0.625) == "62%"


def test_sampled_rate_table_rows_per_domain_or_pooled():
    def judged(passes: list[int]) -> list[list[dict]]:  # 2 samples per prompt; the first hedges
        return [
            [{"pass": i < p, "rejected_like": i == 0, "text": ""} for i in range(2)] for p in passes
        ]

    sampled = {
        "settings": {"k": 2},  # evaluate_run's part also holds its settings: not a model
        "base": sampled_rates(RECORDS, judged([0, 0, 1, 0])),
        "trained": sampled_rates(RECORDS, judged([2, 1, 2, 2])),
    }
    base_all, trained_all = sampled["base"]["all"]["all"], sampled["trained"]["all"]["all"]
    assert (base_all["pass"]["n"], base_all["pass"]["rate"]) == (8, 1 / 8)
    rows = sampled_rate_table(sampled)
    assert [r[:3] for r in rows] == [
        ["arithmetic", "in-domain", 2],
        ["arithmetic", "ood", 2],
        ["concise", "in-domain", 2],
        ["concise", "ood", 2],
        ["all", "in-domain", 4],
        ["all", "ood", 4],
    ]
    assert rows[0][3:] == [
        rate_with_interval(sampled["base"]["arithmetic"]["in_domain"]["pass"]),
        rate_with_interval(sampled["trained"]["arithmetic"]["in_domain"]["pass"]),
        "50%",
        "50%",
    ]
    pooled = sampled_rate_table(sampled, models=["trained", "base"], domains=("all",))
    assert pooled[-1] == [
        "all",
        "all",
        8,
        rate_with_interval(trained_all["pass"]),
        rate_with_interval(base_all["pass"]),
        "50%",
        "50%",
    ]
    assert trained_all["pass"]["rate"] == 7 / 8
    assert sampled_rate_table(None) == []


def test_rate_with_interval():
    assert rate_with_interval({"rate": 0.5, "low": 0.2345, "high": 0.8}) == "50% [23-80]"


def test_html_table_escapes_every_cell():
    from orpo_lab.notebook import html_table

    assert html_table(["model", "a<b"], [["SFT", "50% [19-81]"], ["x&y", 3]]) == (
        "<table><tr><th>model</th><th>a&lt;b</th></tr>"
        "<tr><td>SFT</td><td>50% [19-81]</td></tr><tr><td>x&amp;y</td><td>3</td></tr></table>"
    )
