"""Attack success rate of ItD on the zoo, before / after: every attack family at its default
budget, one class and three classes erased (JSON).

For each erase set, ``visionsae attack``'s runs (:func:`visionsae.eval.attack.attack`: no attack,
then text, white-box and concept-vector attacks, seed prompts of the ``evaluate`` family) against

* ``after``: the eraser of this checkout (the zoo's SAE and concept set, or ``--sae`` / ``--concepts``);
* ``before`` (with ``--before``): an older eraser given as a folder holding its ``cfg.json``,
  ``sae.safetensors`` and ``concepts.json`` (e.g. the files of the zoo's fashion-text-sae at an
  older commit: ``git show ccd889a:assets/zoo/fashion-text-sae/concepts.json`` and so on);

and, as a sanity anchor of the counting, each family's attack prompts judged again with the
erasure switched off (the stock pipeline on both sides: its ASR is 1 up to the UNet's batch numerics).

    python -m benchmarks.attack_asr [--before DIR] --out runs/bench-attack/attack_asr.json [--prompts 12]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def stock_anchor(target, family_report: dict, seed: int) -> dict:
    from visionsae.attack import SeedResult, judge_results

    results = [SeedResult(a["seed_prompt"], a["concept"], a["prompt"], a["queries"], a["search_found"])
               for a in family_report["attacks"]]
    target.erased.itd_enabled = False
    try:
        out = judge_results(target, results, seed)
    finally:
        target.erased.itd_enabled = True
    return {k: out[k] for k in ("asr", "successes", "counted", "prompts")}


def main(argv=None) -> int:
    import torch

    from visionsae.attack import write_json
    from visionsae.eval.attack import FAMILIES, attack, zoo_target

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None,
                        help="folder with an older eraser's cfg.json, sae.safetensors, concepts.json (default: none, only 'after')")
    parser.add_argument("--before-label", default="before", help="what the older eraser is (e.g. its commit)")
    parser.add_argument("--sae", default=None, help="the new eraser's SAE folder (default: the zoo's)")
    parser.add_argument("--concepts", default=None, help="the new eraser's concept set (default: the zoo's)")
    parser.add_argument("--erase", action="append", default=None, help="comma-separated set; repeat (default: sneaker, then sneaker,bag,trouser)")
    parser.add_argument("--families", default=",".join(("none", *FAMILIES)), help="comma-separated families")
    parser.add_argument("--prompts", type=int, default=12, help="seed prompts per erased class (default: 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-family", default="evaluate", choices=["evaluate", "calibrate"],
                        help="prompt family of the seed prompts: evaluate (the figures, default) or calibrate (to choose a "
                             "setting on; its figures are not out of sample)")
    parser.add_argument("--out", default="runs/bench-attack/attack_asr.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images-per-prompt", type=int, default=1,
                        help="images judged per prompt, the majority deciding (default 1; see visionsae attack --help)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = Path(args.before) if args.before else None
    sets = [s.split(",") for s in (args.erase or ["sneaker", "sneaker,bag,trouser"])]
    families = args.families.split(",")
    report = {"benchmark": "attack_asr", "machine": platform.machine(), "threads": args.threads, "prompts_per_class": args.prompts,
              "seed": args.seed, "split": f"seed prompts from the {args.seed_family} prompt family only", "budget": "each family's default",
              "before": {"label": args.before_label, "sae": str(before)} if before else None, "after": {"sae": args.sae or "the zoo's fashion-text-sae"},
              "runs": []}
    for names in sets:
        erasers = [("after", args.sae, args.concepts)] + ([("before", before, before / "concepts.json")] if before else [])
        for which, sae, concepts in erasers:
            start = time.perf_counter()
            target = zoo_target(names, sae, concepts, images_per_prompt=args.images_per_prompt)
            run = attack(families, names, None, args.seed, args.prompts, None, sae, concepts, target=target,
                         seed_family=args.seed_family)
            entry = {"erased": names, "eraser": which, "edit": run["edit"], "hook": run["hook"], "asr": run["asr"],
                     "images_per_prompt": args.images_per_prompt, "chance": run["chance"],
                     "counted": {f: r["counted"] for f, r in run["families"].items()},
                     "flagged": {f: r["flagged"] for f, r in run["families"].items()},
                     "stock_anchor": {f: stock_anchor(target, r, args.seed) for f, r in run["families"].items()},
                     "seconds": time.perf_counter() - start, "families": run["families"]}
            report["runs"].append(entry)
            write_json(args.out, report)
            print(json.dumps({k: entry[k] for k in ("erased", "eraser", "asr", "counted", "chance")}), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
