"""Command line: `onnxvq compress | check | inspect`."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

from .errors import ConfigError, ExitCode, OnnxVQError, OutputError


def _fail(exc: OnnxVQError) -> None:
    click.echo(f"onnxvq: error: {exc}", err=True)
    sys.exit(int(exc.exit_code))


class _Group(click.Group):
    """Turn our errors into one line on stderr with their exit code; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxVQError as exc:
            _fail(exc)
        except MemoryError:
            click.echo("onnxvq: error: out of memory", err=True)
            sys.exit(int(ExitCode.RUNTIME_ERROR))
        except KeyboardInterrupt:
            click.echo("onnxvq: interrupted", err=True)
            sys.exit(int(ExitCode.INTERRUPTED))
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click reports these itself
        except Exception as exc:  # noqa: BLE001 - last line of defence: a bug, still one line
            if os.environ.get("ONNXVQ_DEBUG"):
                raise
            click.echo(f"onnxvq: error: internal error: {type(exc).__name__}: {exc} "
                       f"(set ONNXVQ_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(int(ExitCode.RUNTIME_ERROR))


@click.group(cls=_Group)
@click.version_option(package_name="onnxvq")
def main():
    """Compress the weights of ONNX models with vector quantization (Gong et al. 2014)."""


def _parse_dims(values) -> dict[str, int]:
    dims = {}
    for item in values:
        name, _, value = item.partition("=")
        if not value.isdigit() or int(value) < 1:
            raise click.BadParameter(f"expected NAME=POSITIVE_INT, got {item!r}", param_hint="--input-dim")
        dims[name] = int(value)
    return dims


def _check_json_path(path: str | None, *models, flag: str = "--json") -> None:
    """--json (or --save-config) must not name one of the models (it would replace it)."""
    if not path:
        return
    for model in models:
        target, other = Path(path), Path(model)
        if target.resolve() == other.resolve() or (target.exists() and other.exists()
                                                   and os.path.samefile(target, other)):
            raise OutputError(f"{path}: {flag} would overwrite {model}; choose another path")
    if Path(path).is_dir():
        raise OutputError(f"{path}: {flag} names a folder; give a file path")


def _write_json(path: str, payload: dict) -> None:
    target = Path(path)
    folder = target.resolve().parent
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, default=_json_default)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the JSON report: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:  # no half-written report left behind
            Path(tmp).unlink(missing_ok=True)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _feeds(model, data, samples, seed, dims, rules=None):
    """Check inputs from --data, or generated; ``rules`` (a list) receives how each generated one was made."""
    from .check import generate_inputs, load_inputs

    if data:
        return load_inputs(model, data, samples)
    generated = generate_inputs(model, samples=samples or 8, seed=seed, dims=dims)
    if rules is not None:
        rules.extend(generated.rules)
    return generated.feeds


def _input_rules_text(rules) -> str:
    return "generated inputs (pass --data for real ones):\n" + "\n".join(f"  {r}" for r in rules)


def _parity_table(parity) -> str:
    from .report import format_table

    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [[o.name, f"{o.max_abs_err:.3g}", f"{o.rel_err:.3g}", f"{o.cosine:.6f}", fmt(o.top1_agreement),
             fmt(o.top5_agreement)] for o in parity.outputs]
    return format_table(["output", "max abs err", "rel err", "cosine", "top1 agree", "top5 agree"], rows)


_threshold_options = [
    click.option("--data", type=click.Path(), help="Inputs as .npz (keys = input names, or `x` for one input)."),
    click.option("--samples", type=click.IntRange(min=1), default=None, help="Samples for generated inputs (default 8), or a cap on --data."),
    click.option("--input-dim", multiple=True, metavar="NAME=N", help="Value of a dynamic input dimension."),
    click.option("--min-cosine", type=float, default=None, help="Fail (exit 1) when an output's cosine is lower."),
    click.option("--max-rel-err", type=float, default=None, help="Fail (exit 1) when an output's relative L2 error is higher."),
]


def _with(options):
    def wrap(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


@main.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write the compressed model.")
@click.option("--method", type=click.Choice(["pq", "kmeans", "rq", "binary", "svd", "skip"]), default=None,
              help="Global method (default kmeans --bits 4).")
@click.option("--bits", type=click.IntRange(1, 8), default=None, help="Bits per code (codebooks hold 2**bits entries).")
@click.option("--dim", type=click.IntRange(1, 64), default=None, help="Subvector length (pq, rq).")
@click.option("--axis", type=click.Choice(["in", "out"]), default=None, help="Split subvectors along K (in) or N (out).")
@click.option("--stages", type=click.IntRange(1, 16), default=None, help="Residual stages (rq).")
@click.option("--group-size", type=click.IntRange(min=0), default=None, help="Output channels per codebook (kmeans; 0 = per tensor).")
@click.option("--rank", type=click.IntRange(min=1), default=None, help="Rank (svd).")
@click.option("--ratio", type=click.FloatRange(min=0, min_open=True), default=None, help="Target compression ratio (svd).")
@click.option("--unscaled", is_flag=True, default=False, help="binary: the paper's plain ±1 (no per-channel scale).")
@click.option("--codebook-dtype", type=click.Choice(["float32", "float16"]), default=None, help="Storage dtype of codebooks.")
@click.option("--config", "config_file", type=click.Path(), default=None, help="YAML/JSON config with per-layer overrides.")
@click.option("--seed", type=int, default=None, help="Seed; same seed and input give the same bytes (default 0).")
@click.option("--include", multiple=True, help="Only nodes whose name matches this regex (repeatable).")
@click.option("--exclude", multiple=True, help="Skip nodes whose name matches this regex (repeatable).")
@click.option("--min-elements", type=click.IntRange(min=0), default=None, help="Skip weights with fewer elements (default 1024).")
@click.option("--format", "fmt", type=click.Choice(["custom", "portable"]), default=None,
              help="custom: our VQMatMul op (small at run time); portable: standard ONNX ops only.")
@click.option("--op-types", "op_types", default=None, metavar="LIST",
              help="Only these op types, comma-separated (default: all of Conv,ConvTranspose,Gather,Gemm,MatMul).")
@click.option("--protect", default=None, metavar="LIST",
              help="Layers kept dense: comma-separated from depthwise,first_conv (default: depthwise; '' for none).")
@click.option("--matmul-runtime", type=click.Choice(["auto", "op", "decode"]), default=None,
              help="custom format, Gemm/MatMul: op = VQMatMul on the codes; decode = a decoder ONNX Runtime folds "
                   "into the dense weight at load (original speed); auto (default) = op for 2-D activations, "
                   "decode for sequence (rank >= 3) activations.")
@click.option("--prune", type=click.FloatRange(0, 1, max_open=True), default=None, metavar="FRACTION",
              help="Set this share of every layer's weights to exactly 0 (kmeans: weights; pq/rq: whole "
                   "subvectors), through a zero codeword fixed in every codebook. By magnitude; with "
                   "--calibration by output error (OBS), the error pushed onto the weights kept. A config's "
                   "`prune:` option sets it per layer or op type.")
@click.option("--entropy", is_flag=True, default=None,
              help="Store each layer's codes entropy-coded (a tiered prefix code; onnxvq/ops/entropy.py) where "
                   "that is smaller. Standard ops decode it, so ONNX Runtime folds it once at session creation: "
                   "run-time speed and RAM do not change.")
@click.option("--archive-sizes/--no-archive-sizes", "archive", default=None,
              help="Report the written file's size after zstd -19 and zip -9 (default: on with --entropy or --prune).")
@click.option("--jobs", type=click.IntRange(min=-1), default=1, help="Layers fitted in parallel (joblib; -1 = all cores).")
@click.option("--calibration", type=click.Path(), default=None,
              help="Calibration inputs (.npz, like --data): fit each layer to its output error on them "
                   "(GPTQ-style) instead of to its weights alone. Use inputs that are not your evaluation set.")
@click.option("--target-ratio", type=click.FloatRange(min=1, min_open=True), default=None,
              help="Budget: make the whole file this many times smaller; each layer's method and bits are "
                   "chosen (needs --calibration).")
@click.option("--target-size", type=click.IntRange(min=1), default=None, help="Budget: whole file size in bytes.")
@click.option("--min-agreement", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Budget floor: top-1 agreement with the original on the calibration data; the allocation "
                   "backs off (more bytes) until it holds. Alone: the smallest file that holds it.")
@click.option("--save-config", type=click.Path(), default=None,
              help="Budget mode: write the chosen per-layer settings as a config file (YAML or .json).")
@click.option("--check/--no-check", "run_check", default=True, help="Compare outputs with the original (default on).")
@_with(_threshold_options)
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the full report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table.")
def compress(model, output, method, bits, dim, axis, stages, group_size, rank, ratio, unscaled, codebook_dtype,
             config_file, seed, include, exclude, min_elements, fmt, op_types, protect, matmul_runtime, prune,
             entropy, archive, jobs, calibration, target_ratio, target_size, min_agreement, save_config, run_check, data, samples,
             input_dim, min_cosine, max_rel_err, json_path, quiet):
    """Compress MODEL's weights (Conv, ConvTranspose, Gather embeddings, Gemm, MatMul) into codes +
    codebooks and write OUTPUT."""
    from .check import check_parity
    from .compress import compress_model
    from .config import build_plan, load_config_file
    from .modelio import check_output_path, load_model, save_model
    from .inspect import initializer_bytes
    from .report import layer_rows, layers_table, op_type_totals, totals

    dims = _parse_dims(input_dim)
    source = load_model(model)
    check_output_path(model, output)
    _check_json_path(json_path, model, output)
    _check_json_path(save_config, model, output, *([json_path] if json_path else []), flag="--save-config")
    if save_config and target_ratio is None and target_size is None and min_agreement is None:
        raise ConfigError("--save-config writes the settings a budget chose; give --target-ratio, --target-size "
                          "or --min-agreement")
    cli_options = {"method": method, "bits": bits, "dim": dim, "axis": axis, "stages": stages,
                   "group_size": group_size, "rank": rank, "ratio": ratio, "codebook_dtype": codebook_dtype,
                   "scaled": False if unscaled else None, "seed": seed, "min_elements": min_elements, "format": fmt,
                   "include": include or None, "exclude": exclude or None,
                   "enabled_op_types": op_types, "protect": protect, "matmul_runtime": matmul_runtime,
                   "prune": prune, "entropy": entropy}
    plan = build_plan(load_config_file(config_file) if config_file else None, cli_options)
    # Inputs for the check first: a problem with them (--data, huge declared shapes) stops the
    # run before any work is done or any file is written.
    input_rules = []
    feeds = _feeds(source, data, samples, plan.seed, dims, input_rules) if run_check else None
    calib = _calibration_inputs(source, calibration, data)
    budget = _budget(model, target_ratio, target_size, min_agreement, min_cosine, calib)
    if budget is not None and plan.prunes:
        raise ConfigError("--prune (or a config's prune:) and a budget (--target-ratio, --target-size, "
                          "--min-agreement) do not combine: the budget's candidates are unpruned, so it would "
                          "drop the pruning; prune with explicit settings instead")
    say = (lambda _m: None) if quiet else (lambda m: click.echo(f"onnxvq: {m}", err=True))
    # In place: the source model becomes the output, so peak memory is one model, not two.
    result = compress_model(source, plan, jobs=jobs, progress=not quiet, inplace=True, calibration=calib,
                            budget=budget, say=say)
    del source
    written = save_model(result.model, output)
    rows = layer_rows(result)
    report = {
        "input": str(model), "output": str(output), "format": plan.format,
        "layers": rows, "totals": totals(rows),
        "original_file_bytes": _file_bytes(model), "compressed_file_bytes": written,
        "folded_batchnorms": [{"conv": c, "batchnorm": b} for c, b in result.folded_batchnorms],
        "by_op_type": op_type_totals(rows),
    }
    report["file_ratio"] = report["original_file_bytes"] / written if written else None
    pruned = [(job.sparsity, job.first.elements) for job in result.jobs if job.sparsity is not None]
    if pruned:
        report["pruning"] = {"layers": len(pruned), "weights": sum(n for _, n in pruned),
                             "sparsity": sum(s * n for s, n in pruned) / sum(n for _, n in pruned)}
    if archive or (archive is None and (plan.entropy or plan.prune)):
        from .archive_sizes import archive_sizes

        report["archive_sizes"] = archive_sizes(output)
    if calibration:
        report["calibration"] = {"path": str(calibration), "samples": int(next(iter(calib.values())).shape[0]),
                                 "same_file_as_data": bool(data) and _same_file(calibration, data)}
    if result.allocation is not None:
        report["budget"] = {"target_bytes": budget.target_bytes, "min_agreement": budget.min_agreement,
                            "min_cosine": budget.min_cosine,
                            "file_bytes": result.allocation.file_bytes, "layer_gains": result.allocation.gains,
                            "calibration_quality": result.allocation.quality,
                            "floor_held": budget.floor_holds(result.allocation.quality),
                            "trials": result.allocation.history, "config": result.allocation.config}
        if save_config:
            _write_config(save_config, result.allocation.config)
    # What the file holds beyond tensor data: names, attributes, graph structure, protobuf framing.
    report["compressed_initializer_bytes"] = initializer_bytes(result.model)
    report["protobuf_overhead_bytes"] = written - report["compressed_initializer_bytes"]
    parity = None
    if run_check:
        parity = check_parity(model, output, feeds)
        report["parity"] = parity.summary()
        report["parity_outputs"] = parity.to_dict()["outputs"]
        report["generated_inputs"] = [r.to_dict() for r in input_rules]  # empty with --data
        outputs = {site.display_name: site.node.output[0] for job in result.jobs for site in job.sites}
        _attach_layer_errors(rows, load_model(model), result.model, feeds, outputs)
    if json_path:
        _write_json(json_path, report)
    if not quiet:
        click.echo(layers_table(rows))
        t = report["totals"]
        click.echo(f"\ncompressed layers: {_mb(t['original_bytes'])} -> {_mb(t['compressed_bytes'])}"
                   f" ({t['ratio']:.1f}x, codebooks {_mb(t['codebook_bytes'])})")
        for op_type, k in report["by_op_type"].items():
            click.echo(f"  {op_type:<14} {k['layers']:>4} layer(s): {_mb(k['original_bytes'])} -> "
                       f"{_mb(k['compressed_bytes'])} ({k['ratio']:.1f}x)")
        if result.folded_batchnorms:
            click.echo(f"  folded {len(result.folded_batchnorms)} BatchNormalization node(s) into their convolutions")
        click.echo(f"whole model file: {_mb(report['original_file_bytes'])} -> {_mb(written)} "
                   f"({report['file_ratio']:.2f}x)  written to {output}")
        if "pruning" in report:
            p = report["pruning"]
            click.echo(f"  pruned {p['layers']} layer(s): {p['sparsity']:.1%} of their weights are exactly 0")
        if "archive_sizes" in report:
            a = report["archive_sizes"]
            click.echo(f"  the written file after zstd -19: {_mb(a['zstd19'])}, after zip -9: {_mb(a['zip'])}")
        if result.allocation is not None:
            b = report["budget"]
            q = b["calibration_quality"]
            held = "held" if b["floor_held"] else "NOT held"
            click.echo(f"budget: calibration top-1 agreement {q['top1_agreement']:.4f}, cosine {q['cosine_mean']:.5f}"
                       + (f" (floor {held})" if budget.min_agreement or budget.min_cosine else ""))
            click.echo(_config_text(b["config"]))
        if parity is not None:
            if input_rules:
                click.echo("\n" + _input_rules_text(input_rules))
            click.echo("\n" + _parity_table(parity))
    if parity is not None:
        problems = parity.failures(min_cosine, max_rel_err)
        if problems:
            for p in problems:
                click.echo(f"onnxvq: check failed: {p}", err=True)
            sys.exit(int(ExitCode.CHECK_FAILED))


def _calibration_inputs(model, calibration, data):
    if not calibration:
        return None
    from .check import load_inputs

    if data and _same_file(calibration, data):
        click.echo("warning: --calibration and --data are the same file: the parity check is not held-out",
                   err=True)
    return load_inputs(model, calibration)


def _same_file(a, b) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _budget(model_path, target_ratio, target_size, min_agreement, min_cosine, calib):
    from .budget import Budget

    if target_ratio is None and target_size is None and min_agreement is None:
        return None  # --min-cosine alone stays the parity check it always was
    if target_ratio is not None and target_size is not None:
        raise ConfigError("give --target-ratio or --target-size, not both")
    if calib is None:
        raise ConfigError("a size or quality budget needs --calibration DATA.npz to measure it on")
    target = target_size
    if target_ratio is not None:
        target = int(_file_bytes(model_path) / target_ratio)
    return Budget(target, min_agreement, min_cosine)


def _config_text(config: dict) -> str:
    import yaml

    return "chosen settings (reusable with --config):\n" + yaml.safe_dump(config, sort_keys=False)


def _write_config(path: str, config: dict) -> None:
    import yaml

    from .sweep import _atomic_write

    text = json.dumps(config, indent=2) if str(path).endswith(".json") else yaml.safe_dump(config, sort_keys=False)
    _atomic_write(Path(path), lambda f: f.write(text))


def _attach_layer_errors(rows: list[dict], original, compressed, feeds, outputs=None) -> None:
    """Add each layer's own output error (``output_rel_err``) so a user sees which layer hurts."""
    from .check import layer_output_errors
    from .modelio import EXTERNAL_DATA_THRESHOLD

    if original.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        return  # too large to re-serialize with extra outputs; the end-to-end parity still stands
    errors = {e["name"]: e for e in layer_output_errors(original, compressed, feeds, outputs)}
    for row in rows:
        if row["name"] in errors:
            row["output_rel_err"] = errors[row["name"]]["rel_err"]


def _mb(n) -> str:
    return f"{n / 1e6:.3f} MB"


def _file_bytes(path) -> int:
    from .modelio import file_bytes

    return file_bytes(path)


@main.command()
@click.argument("original", type=click.Path())
@click.argument("compressed", type=click.Path())
@_with(_threshold_options)
@click.option("--seed", type=int, default=0, help="Seed for generated inputs.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the report as JSON.")
def check(original, compressed, data, samples, input_dim, min_cosine, max_rel_err, seed, json_path):
    """Compare COMPRESSED with ORIGINAL on the same inputs: errors, agreement and sizes."""
    from .check import check_parity
    from .inspect import size_by_layer
    from .modelio import load_model

    source = load_model(original)
    target = load_model(compressed)
    _check_json_path(json_path, original, compressed)
    input_rules = []
    feeds = _feeds(source, data, samples, seed, _parse_dims(input_dim), input_rules)
    parity = check_parity(original, compressed, feeds)
    sizes = size_by_layer(target)
    _attach_layer_errors(sizes, source, target, feeds)
    report = {"original": str(original), "compressed": str(compressed), "parity": parity.summary(),
              "outputs": parity.to_dict()["outputs"], "layers": sizes,
              "generated_inputs": [r.to_dict() for r in input_rules],
              "original_file_bytes": _file_bytes(original), "compressed_file_bytes": _file_bytes(compressed)}
    if json_path:
        _write_json(json_path, report)
    if input_rules:
        click.echo(_input_rules_text(input_rules) + "\n")
    click.echo(_parity_table(parity))
    if sizes:
        from .report import format_table

        click.echo("\n" + format_table(
            ["layer", "codes", "codebooks", "compressed", "original", "ratio", "layer out err"],
            [[s["name"], str(s["code_bytes"]), str(s["codebook_bytes"]), str(s["compressed_bytes"]),
              "-" if s["original_bytes"] is None else str(s["original_bytes"]),
              f"{s['ratio']:.1f}x" if s["ratio"] else "-",
              f"{s['output_rel_err']:.4f}" if "output_rel_err" in s else "-"] for s in sizes]))
    click.echo(f"\nfile: {_mb(report['original_file_bytes'])} -> {_mb(report['compressed_file_bytes'])}")
    problems = parity.failures(min_cosine, max_rel_err)
    for p in problems:
        click.echo(f"onnxvq: check failed: {p}", err=True)
    if problems:
        sys.exit(int(ExitCode.CHECK_FAILED))


@main.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the inventory as JSON.")
def inspect_cmd(model, json_path):
    """List MODEL's candidate layers and how much of the file they hold."""
    from .inspect import inventory
    from .modelio import load_model
    from .report import format_table

    _check_json_path(json_path, model)
    inv = inventory(load_model(model))
    if json_path:
        _write_json(json_path, inv)
    rows = [[c["name"], c["op_type"], "x".join(map(str, c.get("weight_shape") or [])) or "-",
             f"{c['in_features']}x{c['out_features']}" if c["in_features"] else "-", str(c["elements"]),
             c.get("skipped_reason") or "candidate"] for c in inv["layers"]]
    click.echo(format_table(["layer", "op", "weight shape", "K x N", "weights", "status"], rows))
    total = inv["total_weight_bytes"]
    click.echo(f"\nweights: {total / 1e6:.3f} MB in all, {inv['dense_weight_bytes'] / 1e6:.3f} MB in candidate "
               f"layers ({100 * inv['dense_share']:.1f}%)")
    for op_type, k in sorted(inv["by_op_type"].items(), key=lambda kv: -kv[1]["weight_bytes"]):
        click.echo(f"  {op_type:<14} {k['layers']:>4} layer(s) {k['weight_bytes'] / 1e6:9.3f} MB "
                   f"({100 * k['share']:.1f}% of the weights)")
    cap = inv["max_file_ratio"]
    click.echo("best whole-file ratio (candidate layers to nothing, the rest as is): "
               + ("unbounded" if cap is None else f"{cap:.2f}x"))


try:  # `eval` and `sweep` live in their own module
    from . import cli_eval  # noqa: F401,E402
except ImportError as exc:  # pragma: no cover - only while that module is absent
    if "cli_eval" not in str(exc):
        raise

if __name__ == "__main__":
    main()
