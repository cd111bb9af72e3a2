"""`compare`: several policies evaluated on one dataset, their values and differences.

Offline policy selection: which of these policies should be deployed? Each
policy's value J(pi) comes from `tdntk.experiments.evaluate.evaluate` (same
data, settings and initial states), with its 95 % interval. The estimates
share the data, so they are correlated: the difference J_a - J_b of every
pair gets its own interval from a jackknife of the *difference* over the same
groups of episodes (`tdntk.policy_value.difference`), and P(J_a > J_b) is
read off the same t distribution.

`run(cmd)` writes values.csv, differences.csv, compare.md, compare.png and
summary.json into ``cmd.out`` (`tdntk.report.compare`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..datasets.minari_io import load_minari
from ..datasets.offline import OfflineData, load_npz
from ..datasets.policies import load_policy
from ..files import file_digest, open_output
from ..policy_value import Difference, PolicyValue, difference
from .command import Command, overwrite_option, progress_option
from .evaluate import EvaluateConfig, ValueEstimate, _load_states, _value_line, evaluate

__all__ = ["Comparison", "CompareCommand", "compare", "parse_policies", "run", "COMMAND"]

BEHAVIOUR = "behaviour"


@dataclass(frozen=True)
class Comparison:
    """Policies evaluated on the same data.

    Attributes:
        names: the policies' names, in the order given.
        values: name -> `PolicyValue` J.
        differences: one `Difference` per pair (a before b in `names`).
        estimates: name -> the full `ValueEstimate`.
        summary: settings, data, per-policy and per-pair results, warnings.
    """

    names: list
    values: dict
    differences: list
    estimates: dict = field(repr=False)
    summary: dict = field(repr=False)

    def difference(self, a: str, b: str) -> Difference:
        """The `Difference` J_a - J_b (either order)."""
        for d in self.differences:
            if (d.a, d.b) == (a, b):
                return d
            if (d.a, d.b) == (b, a):
                return difference(a, self.values[a], b, self.values[b])
        raise KeyError(f"no policies {a!r} and {b!r} in this comparison")


def compare(
    data: OfflineData,
    policies: Mapping[str, object],
    config: EvaluateConfig | None = None,
    initial_states=None,
    progress: bool = False,
) -> Comparison:
    """Evaluate each policy on `data` and compare every pair.

    Args:
        data: the transitions.
        policies: name -> policy (a callable, a spec string for `load_policy`, or None
            for the behaviour policy); at least 2.
        config: `EvaluateConfig` shared by all (default: its defaults).
        initial_states: (m0, o) states J averages over (needs every policy to be given;
            default: the episodes' first states).
    Returns:
        `Comparison`.
    """
    cfg = EvaluateConfig() if config is None else config
    if len(policies) < 2:
        raise ValueError(f"compare: give at least 2 policies, got {len(policies)}")
    start = time.perf_counter()
    estimates: dict[str, ValueEstimate] = {}
    for name, policy in policies.items():
        estimates[name] = evaluate(
            data, cfg, policy, progress=progress, initial_states=initial_states
        )
    names = list(policies)
    values: dict[str, PolicyValue] = {name: estimates[name].policy_value for name in names}
    diffs = [
        difference(a, values[a], b, values[b]) for i, a in enumerate(names) for b in names[i + 1 :]
    ]
    warns = [f"{name}: {w}" for name in names for w in estimates[name].summary["warnings"]]
    if cfg.interval == "ensemble":
        warns.append(
            "interval = ensemble: differences treat the two ensembles as independent and "
            "ignore the finite sample; P(J_a > J_b) is then not meaningful"
        )
    first = estimates[names[0]].summary
    summary = {
        "settings": asdict(cfg),
        "data": first["data"],
        "policies": {
            name: {
                "policy": estimates[name].summary["policy"],
                "policy_value": values[name].as_dict(),
                "estimator": estimates[name].summary["estimator"],
            }
            for name in names
        },
        "differences": [d.as_dict() for d in diffs],
        "interval": first["interval"],
        "warnings": warns,
        "wall_time_s": time.perf_counter() - start,
    }
    return Comparison(names, values, diffs, estimates, summary)


def parse_policies(specs) -> dict:
    """``NAME=SPEC`` / ``SPEC`` / ``behaviour`` strings -> {name: spec or None}."""
    out: dict[str, object] = {}
    for text in specs:
        name, sep, spec = text.partition("=")
        if not sep or ":" in name:  # no name given (a spec may itself hold '=' after ':')
            name, spec = text, text
        name, spec = name.strip(), spec.strip()
        if not name or not spec:
            raise ValueError(f"--policy {text!r}: expected NAME=SPEC, SPEC or 'behaviour'")
        if name in out:
            raise ValueError(f"--policy: the name {name!r} is given twice")
        out[name] = None if spec == BEHAVIOUR else spec
    return out


@dataclass(frozen=True)
class CompareCommand:
    """`tdntk compare`: the data, the policies, where results go, the `EvaluateConfig`."""

    data: str | None = field(default=None, metadata={"help": "Dataset .npz (docs/datasets.md)."})
    minari: str | None = field(
        default=None,
        metadata={"help": "Instead of --data: a Minari dataset id or folder stored locally."},
    )
    policy: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "A policy to compare, repeated (at least 2): NAME=SPEC or SPEC, SPEC as for "
            "evaluate --policy, or 'behaviour' (the recorded behaviour policy)."
        },
    )
    initial_states: str | None = field(
        default=None,
        metadata={
            "help": "States J averages over: a .npz with an (m, obs_dim) array 'observations'; "
            "default: the episodes' first states."
        },
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "Output folder (compare.md, compare.png, CSVs, summary.json).",
            "required": True,
        },  # fmt: skip
    )
    overwrite: bool = overwrite_option()
    progress: bool = progress_option()
    settings: EvaluateConfig = field(default=EvaluateConfig(), metadata={"help": "Settings."})

    def __post_init__(self):
        if (self.data is None) == (self.minari is None):
            raise ValueError("give exactly one of --data FILE.npz or --minari DATASET")
        if self.out is None:
            raise ValueError("--out is required: the folder for the comparison")
        if len(self.policy) < 2:
            raise ValueError("give at least 2 policies: --policy A=pkg.mod:f --policy B=...")


def _command_settings(cmd: CompareCommand, specs: dict) -> dict:
    """What determines the results: the settings and the input files' SHA-256 (JSON-able)."""
    settings = asdict(cmd)
    for key in ("out", "overwrite", "progress"):
        settings.pop(key)
    files = {"data": cmd.data, "initial_states": cmd.initial_states}
    files |= {f"policy {name}": spec.rpartition(":")[0] for name, spec in specs.items() if spec}
    settings["sha256"] = {
        k: file_digest(v) for k, v in files.items() if v is not None and Path(v).is_file()
    }
    return settings


def run(cmd: CompareCommand) -> Comparison:
    """Load the data and policies, compare, write the results into ``cmd.out`` (a new or
    empty folder, or an earlier tdntk result: `tdntk.files.OutputFolder`)."""
    from ..report.compare import write_comparison  # matplotlib only when writing

    specs = parse_policies(cmd.policy)
    inputs = {"--data": cmd.data, "--initial-states": cmd.initial_states}
    inputs |= {f"--policy {n}": s.rpartition(":")[0] for n, s in specs.items() if s}
    with open_output(
        cmd.out, "compare", _command_settings(cmd, specs), cmd.overwrite, inputs
    ) as folder:
        policies = {n: None if s is None else load_policy(s) for n, s in specs.items()}
        data = load_npz(cmd.data) if cmd.data is not None else load_minari(cmd.minari)
        starts = None if cmd.initial_states is None else _load_states(Path(cmd.initial_states))
        result = compare(data, policies, cmd.settings, initial_states=starts, progress=cmd.progress)
        for name, spec in specs.items():
            result.summary["policies"][name]["policy"] = spec or BEHAVIOUR
        result.summary["data_source"] = str(cmd.data or f"minari:{cmd.minari}")
        with folder.staging() as tmp:
            write_comparison(result, tmp)
        folder.complete()
    print(f"wrote {cmd.out}: {len(result.names)} policies")
    for name in result.names:
        print(f"  {name}: {_value_line(result.values[name].as_dict())}")
    for d in result.differences:
        lo, hi = d.interval_95
        print(
            f"  {d.a} - {d.b} = {d.mean:.4g} (95 % [{lo:.4g}, {hi:.4g}]); "
            f"P({d.a} > {d.b}) = {d.prob_greater:.3f}"
        )
    for text in result.summary["warnings"]:
        print(f"warning: {text}", file=sys.stderr)
    return result


COMMAND = Command(
    config=CompareCommand,
    run=run,
    help=(
        "Compare policies offline on one dataset (offline policy selection): each policy's "
        "value J with a 95 % interval, the difference of every pair with its interval and "
        "P(J_a > J_b) (the estimates share the data: the jackknife of the difference keeps "
        "their correlation); a table, a figure and summary.json in --out."
    ),
)
