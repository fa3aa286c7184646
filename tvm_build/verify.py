"""Verify and time: every level of a draft artifact against torch through lcs.runtime itself (on the board over RPC,
on this machine when the board is the host, else the same modules compiled for the host), then each level timed at
1, 2, 4, ... threads to pick the count it runs on."""

from __future__ import annotations

from pathlib import Path

import targets
from lcs import artifact as art
from lcs.errors import LcsError

ATOL = art.FLOAT_ATOL  # a level with quantized activations gets art.level_atol's grid allowance
TIMING_ROUNDS = 3  # of every level at every thread count, interleaved


class VerificationError(LcsError):
    """Compiled outputs differ from torch."""


def planned_threads(target) -> int:
    """The thread count a target's kernels are planned (and tuned) for."""
    return int(target.attrs.get("num-cores") or 1)


def modules_to_retune(modules, level_rows, level_threads, tuned_threads) -> dict[int, list[int]]:
    """{thread count: indices of the modules to tune again for it}: modules whose levels all run on the same count,
    fewer threads than the kernels were planned for (a module shared by levels on different counts stays)."""
    retune: dict[int, list[int]] = {}
    for i, m in enumerate(modules):
        counts = {level_threads[r["index"]] for r in level_rows if r["members"]["library"] == m.name}
        count = counts.pop() if len(counts) == 1 else None
        if count is not None and count < tuned_threads[i]:
            retune.setdefault(count, []).append(i)
    return retune


def verify(manifest, members, host_libs, scratch: Path, session, level_rows, bar):
    """Write a draft artifact and compare every level with torch through lcs.runtime (the libraries compiled for the
    host when the board's cannot run here); refuse with numbers when any level is off. Returns (runtime, diffs)."""
    from lcs.runtime import Runtime

    bar.step("verifying every level", 0)
    draft = scratch / "draft.lcsa"
    if host_libs:
        art.write_artifact(draft, dict(manifest, target=targets.load("host").to_dict()), {**members, **host_libs})
    else:
        art.write_artifact(draft, manifest, members)
    runtime = Runtime(draft, session=session)
    diffs = runtime.check()
    tolerances = [art.level_atol(row["bits"], ATOL) for row in level_rows]
    bad = [(i, d) for i, d in enumerate(diffs) if not d <= tolerances[i]]
    if bad:
        detail = ", ".join(f"level {i} (alpha {level_rows[i]['alpha']:.4g}) {d:.3g} > {tolerances[i]:g}"
                           for i, d in bad)
        raise VerificationError(f"compiled outputs differ from torch by more than their tolerance: {detail}; "
                                f"no artifact written")
    return runtime, diffs


def thread_counts(runtime, levels: int, threads: int | None) -> tuple[list[int | None], dict[int, list[float]]]:
    """Time every level at 1, 2, 4, ... threads up to `threads` (default: the size of TVM's pool, TVM_NUM_THREADS);
    each level gets the fewest threads within 3 % of its fastest (batch-1 kernels of a small level can lose more to
    the pool's hand-offs than they gain). With a single count measurable, levels get None: no evidence to pick with."""
    most = runtime.pool_threads
    if threads:
        most = min(threads, most)
    counts = sorted({1, most, *(2 ** k for k in range(1, most.bit_length()) if 2 ** k < most)})
    # rounds over the counts, each figure the fastest of its rounds: a burst of load elsewhere on the machine (a
    # shared 2-vCPU VM here once made 2 threads look 2x slow for seconds) must not decide a level's count; within a
    # round, timings are settled (multi-threaded calls take a few hundred ms after a pool resize to settle)
    rounds = []
    for _ in range(TIMING_ROUNDS):
        by_count = {}
        for count in counts:
            runtime.set_threads(count)
            by_count[count] = [runtime.time(i, number=1, repeat=3, min_repeat_ms=40, warmup=1)
                               for i in range(levels)]
        rounds.append(by_count)
    by_threads = {c: [min(r[c][i] for r in rounds) for i in range(levels)] for c in counts}
    runtime.set_threads(most)
    if len(counts) == 1:
        return [counts[0] if threads else None] * levels, by_threads
    chosen = []
    for i in range(levels):
        fastest = min(by_threads[c][i] for c in counts)
        chosen.append(min(c for c in counts if by_threads[c][i] <= 1.03 * fastest))
    return chosen, by_threads
