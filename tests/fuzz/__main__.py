"""``python -m tests.fuzz --per-kind N --seed S``: the fuzz on a fresh local stack.

Prints the seed (a run with the same seed and sizes sends the same specs), the counts
by kind and outcome and every violation; exits 1 on a violation."""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time

from tests.fuzz.runner import Report
from tests.fuzz.session import KINDS, fuzz
from tests.stack.localstack import LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--per-kind", type=int, default=1000, help="specs per kind")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--rest", type=int, default=1000, help="REST API bodies (0: none)")
    parser.add_argument("--batch", type=int, default=125, help="objects sent at once")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    began = time.monotonic()
    report = Report()
    try:
        with LocalStack() as stack:
            stack.kubectl("create", "namespace", "fuzz")
            fuzz(stack, "fuzz", per_kind=args.per_kind, seed=seed, rest=args.rest,
                 batch=args.batch, kinds=[k for k in args.kinds.split(",") if k],
                 report=report, say=functools.partial(print, flush=True))
    finally:
        print(report.table())
    print(f"fuzz: seed {seed}, {len(report.violations)} violation(s), "
          f"{time.monotonic() - began:.0f} s in all")
    for note in report.notes:
        print(f"note: {note}")
    for violation in report.violations:
        print(f"VIOLATION {violation}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
