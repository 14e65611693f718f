"""`onnxvq eval` and `onnxvq sweep`, registered on the main click group."""
from __future__ import annotations

import json
import os
import time

import click

from .cli import _with, _write_json, main
from .evaluate import PREPROCESS_HELP


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


_common = [
    click.option("--preprocess", default=None, metavar="SPEC",
                 help="Normalize raw data, e.g. 'scale=1/255,mean=0.1307,std=0.3081,layout=nchw' "
                      "(see `onnxvq eval --help`)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
                 help="Samples per onnxruntime call."),
    click.option("--samples", type=click.IntRange(min=1), default=None, help="Use only the first N samples."),
    click.option("--output", "output_name", default=None, help="Model output to score (default: the first)."),
]



_TASK_HELP = """\
Tasks (--task):
  classify   top-1/top-5 accuracy on labels y; with --against, argmax agreement (per sample, or
             per position for sequence outputs) and the output's relative error
  embedding  one vector per input [N, D], no labels; with --against, the cosine between the
             original's and MODEL's embedding of each input (mean, and the minimum with its
             index) and nearest-neighbour agreement: for each input, its most cosine-similar
             other input of the set under the original and under MODEL; the share that match
  auto       embedding when the data has no labels (y >= 0), the output is 2-D float and
             its name contains "embed" or its rows have unit L2 norm (|norm - 1| < 1e-3) and
             are not probabilities (>= 0 and summing to 1: a confident softmax); otherwise
             classify
Example: onnxvq eval minilm.vq.onnx --data minilm_eval.npz --against minilm.onnx --task embedding"""


@main.command("eval", epilog="\b\nPreprocessing spec (--preprocess):\n" + PREPROCESS_HELP
              + "\n\n\b\n" + _TASK_HELP)
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help=".npz with the inputs (input names, or `x`) and optional int labels `y` (-1 = unlabeled).")
@click.option("--against", type=click.Path(), default=None,
              help="Original model: also report top-1/top-5 agreement with its predictions (embedding "
                   "models: cosine and nearest-neighbour agreement).")
@_with(_common)
@click.option("--threads", type=click.IntRange(min=0), default=0, help="onnxruntime threads (0 = its default).")
@click.option("--task", type=click.Choice(["auto", "classify", "embedding"]), default="auto", show_default=True,
              help="What the output is: class scores, or an embedding compared by cosine and nearest "
                   "neighbours (see below).")
@click.option("--json", "json_out", is_flag=False, flag_value="-", default=None, metavar="PATH",
              help="Write the report as JSON to PATH (`--json -` prints it instead of the summary).")
def eval_cmd(model, data, against, preprocess, batch_size, samples, output_name, threads, task, json_out):
    """Top-1/top-5 accuracy of MODEL on labeled data, and agreement with an original model.

    For an embedding model (see --task): cosine to the original's embeddings and nearest-neighbour
    agreement."""
    from .evaluate import evaluate_model, parse_preprocess

    report = evaluate_model(model, data, against=against, preprocess=parse_preprocess(preprocess),
                            batch_size=batch_size, samples=samples, output=output_name, threads=threads, task=task)
    if json_out == "-":
        click.echo(json.dumps(report, indent=2))
        return
    if json_out:
        _write_json(json_out, report)
    r = report["result"]
    if r.get("task") == "embedding":
        _echo_embedding(report)
        return
    click.echo(f"samples: {r['samples']} ({r['labeled']} labeled)")
    if "original" in report:
        o = report["original"]
        click.echo(f"original   top-1 {_pct(o['top1'])}  top-5 {_pct(o['top5'])}"
                   + (f"  ({o['correct']}/{o['labeled']})" if o.get("correct") is not None else ""))
    click.echo(f"{'model' if 'original' not in report else 'compressed'} top-1 {_pct(r['top1'])}  "
               f"top-5 {_pct(r['top5'])}" + (f"  ({r['correct']}/{r['labeled']})" if r.get("correct") is not None else ""))
    if "top1_agreement" in r:
        click.echo(f"agreement  top-1 {_pct(r['top1_agreement'])}  top-5 {_pct(r.get('top5_agreement'))}  "
                   f"output rel err {r['output_rel_err']:.4g}")
    if r["top1"] is None and "original" not in report:
        click.echo("no labels (y >= 0) in the data: pass --against ORIGINAL to measure agreement")


def _echo_embedding(report) -> None:
    r = report["result"]
    click.echo(f"samples: {r['samples']} (embeddings of {r['embedding_dim']} values, mean norm {r['norm_mean']:.4g})")
    if "cosine_mean" not in r:
        click.echo("embedding output: pass --against ORIGINAL to compare embeddings")
        return
    click.echo(f"cosine to original  mean {r['cosine_mean']:.6f}  min {r['cosine_min']:.6f} "
               f"(sample {r['cosine_min_index']})")
    if r["nn_agreement"] is not None:
        click.echo(f"nearest-neighbour agreement {_pct(r['nn_agreement'])} ({r['nn_matches']}/{r['samples']})  "
                   f"output rel err {r['output_rel_err']:.4g}")
    else:
        click.echo(f"nearest-neighbour agreement - (needs 2 samples)  output rel err {r['output_rel_err']:.4g}")


@main.command("sweep")
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help=".npz inputs with optional labels `y` (see eval).")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder for sweep.csv, sweep.json and plots.")
@click.option("--grid", "grid_file", type=click.Path(), default=None,
              help="YAML/JSON grid: settings (list of method options; list values expand), extra, per_layer, "
                   "min_elements, include, exclude, seed. Default: the paper's grid plus a few extra settings.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel fits (joblib) and onnxruntime threads.")
@_with(_common)
@click.option("--per-layer/--no-per-layer", default=None, help="Also compress one layer at a time (Figure 4).")
@click.option("--min-elements", type=click.IntRange(min=0), default=None, help="Skip smaller weights (default 1024).")
@click.option("--no-plots", is_flag=True, help="Write only the CSV and JSON.")
@click.option("--no-truncate", is_flag=True, help="Evaluate the whole graph every time (slower; for checking).")
@click.option("--runtime", type=click.Choice(["dense", "custom"]), default="dense", show_default=True,
              help="Score each setting on its decoded dense twin (fast; one setting is cross-checked with the "
                   "custom op) or through the VQMatMul op itself.")
@click.option("--calibration", type=click.Path(), default=None,
              help="Calibration inputs (.npz): fit every setting data-aware (on these, not on --data).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary.")
def sweep_cmd(model, data, out_dir, grid_file, jobs, preprocess, batch_size, samples, output_name, per_layer,
              min_elements, no_plots, no_truncate, runtime, calibration, quiet):
    """Compress MODEL's dense layers with every method over a grid; evaluate each (Figures 3 and 4)."""
    from .evaluate import load_dataset, parse_preprocess
    from .modelio import load_model
    from .sweep import load_grid, run_sweep, summary_table, write_outputs

    start = time.perf_counter()
    grid = load_grid(grid_file)
    if per_layer is not None:
        grid.per_layer = per_layer
    if min_elements is not None:
        grid.min_elements = min_elements
    source = load_model(model)
    dataset = load_dataset(source, data, parse_preprocess(preprocess), samples)
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    calib = None
    if calibration:
        calib = load_dataset(source, calibration, parse_preprocess(preprocess)).feeds
        if os.path.exists(data) and os.path.samefile(calibration, data):
            click.echo("warning: --calibration and --data are the same file: the sweep's scores are not held-out",
                       err=True)
    result = run_sweep(source, dataset, grid, model_name=str(model), data_name=str(data), jobs=jobs,
                       output=output_name, batch_size=batch_size, truncate=not no_truncate, runtime=runtime,
                       progress=say, calibration=calib)
    files = write_outputs(result, out_dir, plots=not no_plots)
    b = result.baseline
    click.echo(summary_table(result))
    click.echo(f"\noriginal: top-1 {_pct(b.get('top1'))} on {b['labeled']} labeled of {b['samples']} samples; "
               f"dense layers hold {100 * (b['dense_share'] or 0):.1f}% of the weights "
               f"(file ratio capped at {b['max_file_ratio']:.2f}x)" if b.get("max_file_ratio")
               else f"\noriginal: top-1 {_pct(b.get('top1'))}")
    click.echo(f"wrote {files['csv']}, {files['json']}" + ("".join(f", {p}" for p in result.plots)))
    if result.plots_skipped:
        click.echo(f"plots skipped: {result.plots_skipped}")
    click.echo(f"{len(result.rows)} settings, {len(result.per_layer)} per-layer runs in "
               f"{time.perf_counter() - start:.1f} s (fitting {result.seconds['fit']:.1f} s)")
