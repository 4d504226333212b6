"""``python -m tests.soak --minutes N --seed S --nodes K`` (``make soak``): exits 1 on
any invariant violation. See docs/reliability.md#soak."""

from __future__ import annotations

import argparse
import random
import sys

from tests.soak.run import soak


def _span(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's seed (default: a random one, printed)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--outage", type=_span, default=(30.0, 60.0),
                        help="seconds the kube-apiserver stays stopped (LOW-HIGH)")
    parser.add_argument("--gap", type=_span, default=(20.0, 60.0),
                        help="seconds between one fault's convergence and the next (LOW-HIGH)")
    parser.add_argument("--down", type=_span, default=(20.0, 40.0),
                        help="seconds the revision store's etcd stays stopped, and a state "
                             "directory full (LOW-HIGH)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    figures = soak(args.minutes, seed, args.nodes, outage=args.outage, gap=args.gap,
                   down=args.down)
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
