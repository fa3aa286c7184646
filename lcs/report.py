"""Tables for `lcs build` and `lcs info` (rich); the data comes from the build summary and `lcs.artifact.describe`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lcs.artifact import level_atol


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def print_info(info: dict, console: Console | None = None) -> None:
    console = console or Console()
    v = info.get("verification") or {}
    console.print(f"[bold]{info['path']}[/bold]  {info['size']:,} bytes  format {info['format']} "
                  f"v{info['format_version']}  lcs {info['lcs_version']}  TVM {info['tvm_version'] or '-'}")
    console.print(f"target {info['target']}  strategy {info['strategy']}  family {info['family']}  "
                  + (f"precision {info['precision']}  " if info.get("precision") else "")
                  + f"input {info['input']['shape']} {info['input']['dtype']}  modules {len(info['modules'] or {})}"
                  + (f"  verified on {v.get('on')} (max abs diff {v.get('max_abs_diff'):.3g})" if v else ""))
    if info.get("tuning"):
        for t in info["tuning"]:
            took = t.get("tuning_seconds")
            console.print(f"tuned {', '.join(t['modules'])}: {t['trials_per_module']} trials per module"
                          + (f", {t['kernels']} kernels" if t.get("kernels") else "")
                          + (f", {took:.0f} s" if took is not None else "")
                          + (" (database reused)" if t.get("reused") else ""))
    by_executor: dict[str, list[str]] = {}
    for name, module in (info.get("modules") or {}).items():
        if module.get("executor"):
            by_executor.setdefault(module["executor"], []).append(name.split("/")[-1])
    if by_executor:
        why = next((m["why_not_static"] for m in info["modules"].values() if m.get("why_not_static")), None)
        console.print("runs " + "; ".join(
            f"{', '.join(names)} " + ("with lcs's static executor (no Relax VM)" if kind == "static"
                                      else "as int8 C kernels (no TVM)" if kind == "int8"
                                      else f"on the Relax VM ({why})" if why else "on the Relax VM")
            for kind, names in by_executor.items()))
    threads = (info.get("runtime") or {}).get("threads")
    if threads:
        chosen = info["runtime"].get("chosen_by")
        how = ("as built with --threads" if chosen == "--threads"
               else f"the fastest count measured on {info['runtime'].get('measured_on')}"
               if info["runtime"].get("measured_on") else chosen)
        per_level = any(r.get("threads") for r in info["levels"]) and info["runtime"].get("measured_on")
        console.print(f"runs on at most {threads} thread(s): {how}"
                      + ("; each level on the fewest threads within 3 % of its fastest (column threads)"
                         if per_level else ""))
    # columns only a board of that kind fills: thread counts (CPU boards, measured) and cycles (microcontrollers)
    cols = {"level": lambda r: str(r["index"]), "alpha": lambda r: f"{r['alpha']:.4f}",
            "compression": lambda r: r["label"] or "",
            "acc %": lambda r: _fmt(None if r["accuracy"] is None else 100 * r["accuracy"], ".2f"),
            "ms": lambda r: _fmt(r["latency_ms"], ".3f"), "threads": lambda r: _fmt(r.get("threads"), "d"),
            "cycles": lambda r: _fmt(r["cycles"], ",d"),
            "weights B": lambda r: _fmt(r["member_bytes"].get("weights"), ",d"),
            "library": lambda r: str(r["members"].get("library") or r["members"].get("firmware") or "-").split("/")[-1]}
    shown = [c for c in cols if c not in ("threads", "cycles") or any(r.get(c) is not None for r in info["levels"])]
    table = Table()
    for col in shown:
        table.add_column(col, justify="left" if col in ("compression", "library") else "right", no_wrap=True)
    for row in info["levels"]:
        table.add_row(*(cols[c](row) for c in shown))
    console.print(table)


def print_build(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    v = summary.get("verification")
    line = (f"wrote {summary['output']} ({summary['size']:,} bytes, {len(summary['levels'])} levels, "
            f"{len(summary.get('modules') or {})} modules, {summary['build_seconds']:.1f} s)")
    if v:
        if v["atol"] == 0:  # int8 CPU levels: the reference is the integer reference itself
            line += f"; every level equals the integer reference bit for bit (on {v['on']})"
        else:
            grid = any(row.get("bits") for row in summary["levels"])
            within = f"{v['atol']:g}" + (f" ({level_atol(8, v['atol']):g} with quantized activations)" if grid else "")
            line += f"; every level matches torch within {within} (max {v['max_abs_diff']:.3g}, on {v['on']})"
    elif summary.get("strategy") == "firmware" and (summary.get("firmware") or {}).get("precision") == "int8":
        i8 = summary["firmware"].get("int8") or {}
        cal = i8.get("calibration") or {}
        line += (f"; int8 firmware: every level on integer kernels, calibrated on {cal.get('samples')} {cal.get('source')} "
                 f"samples, {(i8.get('store') or {}).get('mode', 'ready')} weight store {i8.get('store_bytes', 0):,} B"
                 + (f" ({i8['bytes_per_model_weight']} B per weight)" if "bytes_per_model_weight" in i8 else "")
                 + " (reference outputs inside: lcs deploy checks them bit for bit)")
    elif summary.get("strategy") == "firmware":
        line += "; firmware from tvm_build.mcu (reference outputs inside for lcs deploy to check)"
    console.print(line)
