"""`lbbench theory`: queueing-theory predictions for each balancing model."""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING

from lbbench.errors import UserError

if TYPE_CHECKING:
    from lbbench.model.servicetime import ServiceTime
    from lbbench.theory.predict import ModelPrediction


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pods", type=int, required=True, help="number of pods N")
    p.add_argument("--slots", type=int, default=1, help="requests each pod serves at once (default 1)")
    p.add_argument("--service", required=True, help="service-time model, e.g. exp:10ms, const:5ms, lognormal:10ms,1")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=float, help="offered load in requests/s")
    load.add_argument("--utilisation", type=float, help="per-slot utilisation in (0, 1); sets the rate")
    p.add_argument(
        "--arrivals", choices=("poisson", "constant"), default="poisson", help="arrival process (default poisson)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from lbbench.model.servicetime import ServiceTime
    from lbbench.theory.predict import predict

    if args.pods < 1:
        raise UserError(f"--pods must be >= 1, got {args.pods}")
    if args.slots < 1:
        raise UserError(f"--slots must be >= 1, got {args.slots}")
    try:
        service = ServiceTime.parse(args.service)
    except ValueError as e:
        raise UserError(f"--service: {e}") from None
    if service.mean_s <= 0:
        raise UserError(f"--service {args.service}: mean service time must be > 0")
    rate = _rate(args, service)
    predictions = predict(args.pods, args.slots, service, rate, args.arrivals)
    rho = next(iter(predictions.values())).utilisation
    if rho >= 1:
        capacity = args.pods * args.slots / service.mean_s
        raise UserError(f"unstable: utilisation >= 1 ({rho:.3g}: {rate:g} requests/s offered, capacity {capacity:g})")
    if args.json:
        print(json.dumps(_json(args, service, rate, rho, predictions), indent=2))
    else:
        print(_table(args, service, rate, rho, predictions))
    return 0


def _rate(args: argparse.Namespace, service: ServiceTime) -> float:
    from lbbench.theory.predict import utilisation_to_rate

    if args.utilisation is not None:
        u = float(args.utilisation)
        if not (math.isfinite(u) and u > 0):
            raise UserError(f"--utilisation must be > 0, got {args.utilisation}")
        if u >= 1:
            raise UserError(f"unstable: utilisation >= 1 (--utilisation {u:g})")
        return utilisation_to_rate(args.pods, args.slots, service, u)
    rate = float(args.rate)
    if not (math.isfinite(rate) and rate > 0):
        raise UserError(f"--rate must be > 0 requests/s, got {args.rate}")
    return rate


def _json(
    args: argparse.Namespace, service: ServiceTime, rate: float, rho: float, preds: dict[str, ModelPrediction]
) -> dict[str, object]:
    inputs = {
        "pods": args.pods,
        "slots": args.slots,
        "service": str(service),
        "arrivals": args.arrivals,
        "rate_rps": rate,
        "utilisation": rho,
    }
    return {"inputs": inputs, **{k: p.as_dict() for k, p in preds.items()}}


def _ms(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v * 1e3:.{digits}f}"


def _table(
    args: argparse.Namespace, service: ServiceTime, rate: float, rho: float, preds: dict[str, ModelPrediction]
) -> str:
    slots = "slot" if args.slots == 1 else "slots"
    lines = [
        f"{args.pods} pods x {args.slots} {slots}, service {service}, {args.arrivals} arrivals at "
        f"{rate:.6g} requests/s, utilisation {rho:.3f}",
        "",
    ]
    header = ("key", "model", "util", "P(wait)", "mean ms", "p50 ms", "p99 ms", "kind")
    rows = [
        (
            key,
            p.model,
            f"{p.utilisation:.3f}",
            "-" if p.p_wait is None else f"{p.p_wait:.3f}",
            _ms(p.mean_s),
            _ms(p.p50_s),
            _ms(p.p99_s),
            "exact" if p.exact else "approx" if p.mean_s is not None else "none",
        )
        for key, p in preds.items()
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.extend(f"{key}: {p.note}" for key, p in preds.items())
    return "\n".join(lines)
