"""`cxrd monitor report`: drift and live performance of each model version over a time range.

Prints per finding the live AUROC, sensitivity, specificity (with 95% intervals and counts) and ECE,
or "too few" where the positives or negatives are too few to mean anything; drift statistics against
the model's reference with their thresholds; the input characteristics against the reference. With
`--out DIR` it also writes PNG figures there (`daemon.stages.monitor_plots`).
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from daemon.cli.errors import CommandError
from daemon.cli.times import FORMS, parse_time
from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("monitor", help="drift and live performance of the models")
    cmds = p.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND", required=True)
    r = cmds.add_parser("report", help="summary of drift and live performance over a time range, with plots")
    r.add_argument("--since", help=f"start of the range (default: `monitor.window_hours` ago); {FORMS}")
    r.add_argument("--until", help=f"end of the range (default: now); {FORMS}")
    r.add_argument("--out", type=Path, help="write PNG plots into this directory")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for AUROC intervals (default 1000)")
    r.set_defaults(func=run_report, reads_dicom=False)


def _range(args: argparse.Namespace, rt: Runtime) -> tuple[datetime, datetime]:
    until = parse_time(args.until, "--until") if args.until else datetime.now(timezone.utc)
    since = parse_time(args.since, "--since") if args.since else \
        until - timedelta(hours=rt.settings.monitor.window_hours)
    if since >= until:
        raise CommandError(f"--since ({since.isoformat(timespec='seconds')}) must be before --until "
                           f"({until.isoformat(timespec='seconds')})", 2)
    return since, until


def run_report(args: argparse.Namespace, rt: Runtime) -> int:
    since, until = _range(args, rt)
    if args.n_boot < 0 or args.n_boot > 100000:
        raise CommandError("--n-boot must be between 0 and 100000", 2)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} exists and is not a directory", 2)
    from daemon.stages import monitoring
    m = rt.settings.monitor
    with rt.read_sessions() as session:
        rep = monitoring.report(session, rt.registry, since, until, baseline_n=m.baseline_images,
                                min_images=m.min_images, min_cases=m.min_cases,
                                floor=rt.settings.model.promotion.min_auroc_lower_bound, n_boot=args.n_boot)
    files: list[Path] = []
    if args.out is not None:
        from daemon.stages.monitor_plots import write_all
        files = write_all(rep, args.out)
    if args.format == "json":
        print(json.dumps({**rep, "plots": [str(f) for f in files]}, indent=2, default=str))
    else:
        print("\n".join(text_lines(rep)))
        for f in files:
            print(f"plot: {f}")
    return 0


def _ci(v: Any) -> str:
    return f" ({v[0]:.2f}-{v[1]:.2f})" if v else ""


def _num(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def text_lines(rep: dict[str, Any]) -> list[str]:
    t = rep["thresholds"]
    lines = [f"monitoring report {rep['since'][:19]} .. {rep['until'][:19]} UTC",
             f"drift: PSI over {t['psi_bins']} (epsilon {t['psi_epsilon']}): < {t['psi_moderate']} stable, "
             f"{t['psi_moderate']}-{t['psi_drift']} moderate, > {t['psi_drift']} drift; KS reported beside it "
             f"(drift only with p < {t['ks_alpha']} and D > {t['ks_min_d']}); a new category in more than "
             f"{t['new_category_share']:.0%} of images is drift; fewer than {t['min_images']} images: too few",
             f"performance: findings with fewer than {t['min_cases']} positive or negative studies are not "
             f"scored (too few: the numbers would be noise); 95% intervals: AUROC bootstrap, "
             f"sensitivity/specificity Wilson"]
    if not rep["models"]:
        lines.append("no predictions in this range")
    for model in rep["models"]:
        d, p = model["drift"], model["performance"]
        lines += ["", f"model {model['model']}: {p['n_predicted']} images predicted, {p['n_images']} with ground truth"]
        lines.append(f"  performance (operating point = the model's threshold per finding; floor {p['floor']:.2f})")
        lines.append(f"    {'finding':20} {'pos':>4} {'neg':>5}  {'AUROC (95% CI)':18} {'sens (95% CI)':18} "
                     f"{'spec (95% CI)':18} {'ECE':>6}")
        for label, v in p["labels"].items():
            if v["too_few"]:
                body = v["reason"]
            else:
                body = (f"{_num(v['auroc'])}{_ci(v['auroc_ci95']):13} {_num(v['sensitivity'], '.2f')}"
                        f"{_ci(v['sensitivity_ci95']):14} {_num(v['specificity'], '.2f')}{_ci(v['specificity_ci95']):14}"
                        f" {_num(v['ece']):>6}")
            lines.append(f"    {label:20} {v['positives']:4d} {v['negatives']:5d}  {body}")
        if p["alarm"]:
            lines.append(f"  PERFORMANCE BELOW FLOOR: {', '.join(p['below_floor'])}")
        ref = d["reference"]
        lines.append(f"  drift over {d['n_images']} images (reference: "
                     f"{'validation' if ref['validation'] else 'no validation reference'}; {ref['baseline']})"
                     + (" - too few images for a verdict" if d["too_few"] else ""))
        lines.append(f"    {'score of':20} {'PSI':>7} {'KS D':>6} {'KS p':>8} {'pos.rate ref/live':>18}  verdict")
        for label, c in d["labels"].items():
            pr = c["positive_rate"]
            lines.append(f"    {label:20} {_num(c.get('psi')):>7} {_num(c.get('ks_d')):>6} {_num(c.get('ks_p'), '.1e'):>8} "
                         f"{_num(pr['reference'], '.2f'):>8}/{_num(pr['live'], '.2f'):<9}  {c['verdict']}")
        lines.append(f"    {'input':20} {'PSI':>7} {'KS D':>6} {'ref median/live median or categories':40} verdict")
        for key, c in d["inputs"].items():
            if c["kind"] == "categorical":
                what = f"ref {_cats(c.get('reference_counts'))} live {_cats(c.get('live_counts'))}"
                if c.get("new_share"):
                    what += f" new {c['new_share']:.0%}"
            else:
                what = f"{_num(c.get('reference_median'), '.4g')} / {_num(c.get('live_median'), '.4g')}"
            lines.append(f"    {key:20} {_num(c.get('psi')):>7} {_num(c.get('ks_d')):>6} {what[:40]:40} {c['verdict']}"
                         + (f"  [{c['reference_source']}]" if c["verdict"] == "no_reference" else ""))
        if d["alarm"]:
            lines.append(f"  DRIFT: {', '.join(d['drifting_labels'] + d['drifting_inputs'])}")
    return lines


def _cats(counts: dict[str, int] | None) -> str:
    if not counts:
        return "-"
    n = max(sum(counts.values()), 1)
    return ",".join(f"{k or '(none)'}:{v / n:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
