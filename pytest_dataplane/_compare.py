"""``python -m pytest_dataplane compare``: the comparison of two report files, printed.

The reading of files (:mod:`.report.document`) and the printing live here, above both the
report and :mod:`.baseline`, which computes and renders the comparison only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .baseline import compare, comparison_lines
from .report.document import read

__all__ = ["main"]


def main(
    baseline_path: str,
    candidate_path: str,
    *,
    quantile: float = 95,
    max_increase: float | str = 0.10,
    alpha: float = 0.01,
    force: bool = False,
    json_output: bool = False,
) -> int:
    """Print the comparison of two report files.

    Returns 0 without a regression, 1 with one, 2 when a file or an argument is unusable.
    """
    try:
        baseline = read(Path(baseline_path))
        candidate = read(Path(candidate_path))
        comparison = compare(
            baseline,
            candidate,
            quantile=quantile,
            max_increase=max_increase,
            alpha=alpha,
            force=force,
        )
    except ValueError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    if json_output:
        print(json.dumps(comparison.to_dict(), indent=1, allow_nan=False))
    else:
        print(f"baseline:  {baseline_path} ({_when(baseline)})")
        print(f"candidate: {candidate_path} ({_when(candidate)})")
        for line in comparison_lines(comparison):
            print(line)
    for mismatch in comparison.mismatches:
        print(
            f"warning: not compared, fingerprints differ: {mismatch} (--force compares anyway)",
            file=sys.stderr,
        )
    return 1 if comparison.regressions else 0


def _when(document: dict[str, Any]) -> str:
    environment = document.get("environment") or {}
    commit = environment.get("git_commit")
    return f"{environment.get('time', '?')}" + (f", commit {commit[:12]}" if commit else "")
