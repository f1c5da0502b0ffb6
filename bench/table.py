"""bench/table.sh's table, from the lines its cases wrote (on stdin): for each database and
data set, the service's rps over the limit's (the harness's RATIO lines, medians of the rounds),
the tails (the service's p99/p50 over the limit's), errors and each process's peak RSS; then
the goals. A ratio that reaches its goal is in bold.
"""

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

SCENARIOS = ("list", "one", "patch", "post")
NAMES = {
    "sqlite": "SQLite",
    "postgresql": "PostgreSQL",
    "pgbouncer": "PostgreSQL via PgBouncer",
}
POSTGRESQL_GOAL = {"list": 0.20, "one": 0.20, "patch": 0.18, "post": 0.18}
GOALS = {
    "sqlite": {"list": 0.15, "one": 0.15, "patch": 0.12, "post": 0.12},
    "postgresql": POSTGRESQL_GOAL,
    "pgbouncer": POSTGRESQL_GOAL,
}
TAILS_GOAL = 2.0  # the service's p99/p50 at most twice the limit's


@dataclass
class Case:
    kind: str
    dataset: str
    tasks: int
    ratios: dict[str, float] = field(default_factory=dict)
    tails: dict[str, float] = field(default_factory=dict)
    errors: dict[str, list[int]] = field(default_factory=dict)  # service|limit: non-2xx, socket
    rss_kib: dict[str, list[int]] = field(default_factory=dict)  # role: peaks


def pairs(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def parse(lines: Iterable[str]) -> list[Case]:
    cases: list[Case] = []
    for line in lines:
        values = pairs(line)
        if line.startswith("# case "):
            cases.append(Case(values["kind"], values["set"], int(values["tasks"])))
        elif not cases:
            continue
        elif line.startswith("RATIO "):
            scenario = values["scenario"]
            cases[-1].ratios[scenario] = float(values["rps_a_over_b"])
            # (p99 / p99') / (p50 / p50') = (p99 / p50) / (p99' / p50')
            tails = float(values["p99_a_over_b"]) / float(values["p50_a_over_b"])
            cases[-1].tails[scenario] = tails
        elif line.startswith("SUMMARY ") and "label" in values:
            side = "limit" if values["label"] == "limit" else "service"
            errors = cases[-1].errors.setdefault(side, [0, 0])
            errors[0] += int(values["non2xx"])
            errors[1] += int(values["sock_errors"])
        elif line.startswith("RSS "):
            cases[-1].rss_kib.setdefault(values["role"], []).append(int(values["hwm_kib"]))
    return cases


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def per_worker(case: Case) -> str:
    """The service's peak per serving process: the workers' largest with `--workers N`
    (and the supervisor's), else the one process's."""
    workers = case.rss_kib.get("service-worker", [])
    serve = case.rss_kib.get("service", [0])
    if not workers:
        return mib(max(serve))
    return f"{mib(max(workers))} ({len(workers)} workers; supervisor {mib(max(serve))})"


def ratio_cell(case: Case, scenario: str) -> str:
    value = case.ratios.get(scenario)
    if value is None:
        return "-"
    text = f"{value:.3f}"
    return f"**{text}**" if value >= GOALS[case.kind][scenario] else text


def tails_cell(case: Case) -> str:
    cells = []
    for scenario in SCENARIOS:
        value = case.tails.get(scenario)
        text = "-" if value is None else f"{value:.2f}"
        cells.append(f"**{text}**" if value is not None and value <= TAILS_GOAL else text)
    return " / ".join(cells)


def errors_cell(case: Case) -> str:
    return "; ".join(
        f"{side} {case.errors[side][0]}, {case.errors[side][1]}"
        for side in ("service", "limit")
        if side in case.errors
    )


def render(cases: list[Case]) -> str:
    lines = [
        "| database | data set | list | one | patch | post "
        "| tails: list / one / patch / post | non-2xx, socket errors "
        "| peak RSS, service per worker (MiB) | peak RSS, limit (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        tasks = f"{case.tasks:,} tasks" if case.dataset == "large" else f"{case.tasks} tasks"
        lines.append(
            f"| {NAMES[case.kind]} | {case.dataset} ({tasks}) | "
            + " | ".join(ratio_cell(case, scenario) for scenario in SCENARIOS)
            + f" | {tails_cell(case)} | {errors_cell(case)} | {per_worker(case)}"
            + f" | {mib(max(case.rss_kib.get('limit', [0])))} |"
        )
    for name, goal in (("PostgreSQL", POSTGRESQL_GOAL), ("SQLite", GOALS["sqlite"])):
        lines.append(
            f"| goal, {name} | | "
            + " | ".join(f"≥ {goal[scenario]:.2f}" for scenario in SCENARIOS)
            + f" | ≤ {TAILS_GOAL:g} each | 0 | | |"
        )
    return "\n".join(lines)


def main() -> None:
    cases = parse(sys.stdin)
    if not cases:
        raise SystemExit("no '# case' lines on stdin: run bench/table.sh")
    print(
        "Service rps / limit rps in the same run (medians of the rounds); tails: the service's "
        "p99/p50 over the limit's.\n"
    )
    print(render(cases))


if __name__ == "__main__":
    main()
