"""Re-evaluate a saved COCO results file (no model needed).

    detgn evaluate-results --json datasets/coco/annotations/instances_val2017.json \\
        --results output/inference/coco_instances_results.json [--tasks bbox segm] [--output-dir DIR]

Prints box / mask AP (percent) and per-category AP; with --output-dir also writes
metrics.json there. Every image of --json is scored: an image absent from the
results counts as having no detections.
"""
import argparse
import json
import logging
import sys

from detgn.evaluation import evaluate_results_file, format_results_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, help="COCO ground-truth annotation file (instances_*.json)")
    parser.add_argument("--results", required=True, help="COCO results file (coco_instances_results.json)")
    parser.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    parser.add_argument("--output-dir", default=None, help="write metrics.json here")
    parser.add_argument("--print-json", action="store_true",
                        help="print the metrics as JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = evaluate_results_file(
            args.json, args.results, args.tasks, output_dir=args.output_dir
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if args.print_json else format_results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
