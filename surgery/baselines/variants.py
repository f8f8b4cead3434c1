"""The HCNR ablation grid: every open knob of the method (docs/method.md) as a named :class:`PatchOptions`.

Names are stable (they label rows of the comparison table). Each variant changes one thing relative to
the defaults, except the R_IW × R_CW grid, which moves the patch size.
"""

from __future__ import annotations

from ..errors import SurgeryError
from ..hcnr.options import PatchOptions

DEFAULT = PatchOptions()
#: the R_IW x R_CW grid; 0.25 x 0.4 is the compact patch (about 10% of the linear parameters)
SIZE_GRID = ((0.25, 0.2), (0.25, 0.4), (0.5, 0.2), (0.5, 0.4), (0.75, 0.4), (0.5, 0.6))
RANDOM_SEEDS = (0, 1, 2)


def ablation_grid(base: PatchOptions = DEFAULT, seeds: tuple[int, ...] = RANDOM_SEEDS) -> dict[str, PatchOptions]:
    """name -> options for restore-only, random selection, Fisher model, Hessian data, compensation form,
    neuron kind and patch size, all relative to ``base``."""
    grid: dict[str, PatchOptions] = {
        "hcnr": base,
        "restore-only": base.replace(compensation="none"),
        "random-restore-only": base.replace(selection="random", compensation="none"),
        "fisher-at-base": base.replace(fisher_at="base"),
        "fisher-at-sft": base.replace(fisher_at="sft"),
        "hessian-hon": base.replace(hessian_data="hon"),
        "hessian-task": base.replace(hessian_data="task"),
        "hessian-both": base.replace(hessian_data="both"),
        "compensation-exact": base.replace(compensation="exact"),
        "compensation-summed": base.replace(compensation="summed"),
        "neuron-column": base.replace(neuron="column"),
        "neuron-row": base.replace(neuron="row"),
    }
    for seed in seeds:
        grid[f"random-s{seed}"] = base.replace(selection="random", seed=seed)
    for r_iw, r_cw in SIZE_GRID:
        grid[f"size-{r_iw:g}x{r_cw:g}"] = base.replace(r_iw=r_iw, r_cw=r_cw)
    grid["compact"] = base.replace(r_iw=0.25, r_cw=0.4)
    return grid


def variant(name: str, base: PatchOptions = DEFAULT) -> PatchOptions:
    """One named variant of the grid (``random-s7`` and ``size-0.3x0.3`` style names are generated)."""
    grid = ablation_grid(base)
    if name in grid:
        return grid[name]
    if name.startswith("random-s") and name[8:].isdigit():
        return base.replace(selection="random", seed=int(name[8:]))
    if name.startswith("size-") and "x" in name:
        try:
            r_iw, r_cw = (float(v) for v in name[5:].split("x"))
        except ValueError:
            pass
        else:
            return base.replace(r_iw=r_iw, r_cw=r_cw)
    raise SurgeryError(f"Unknown HCNR variant {name!r}; known: {', '.join(sorted(grid))}.")
