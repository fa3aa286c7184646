"""Build strategies: how the levels of a subspace become compiled modules and weight sets.

  per-level         one module per distinct level graph (structured widths change shapes; quantized levels bake their
                    activation grid in). Levels whose graphs are identical (e.g. all unstructured sparsity levels)
                    share one compiled module and differ only in their fp32 weight file. Convolutions run
                    channels-last (NHWC), weights stored in the layout the kernels read (export.ChannelsLast).
  weights-as-input  one module for every level; level-dependent values are run-time inputs: weights (int8 codes +
                    scale/zero for quantized layers, dequantized in the graph), activation grids, norm statistics.
                    Unstructured and quantization families; structured width needs per-level.
  alpha-input       one module whose only level input is alpha: w(alpha) = (1 - alpha) w0 + alpha w1 is blended in the
                    graph (alpha_graph.py). Lines (LCS+L) whose compression does not depend on a data-dependent choice
                    inside the graph; see alpha_graph for what it supports.

Each strategy turns (checkpoint, alphas) into one `LevelNet` per level; build.py treats them all alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lcs import artifact as art
from lcs.errors import ConfigError


@dataclass
class LevelNet:
    """One level as the build sees it: the torch network that gives the reference outputs, the network exported to
    Relax with its example arguments, and the run-time inputs besides x and the weights (with this level's values)."""

    reference: object  # nn.Module: x -> outputs
    export: object  # nn.Module exported to Relax
    args: tuple  # example arguments of `export`
    extra_inputs: list = field(default_factory=list)  # [{"name", "shape", "dtype", "value"}]


class Strategy:
    name: str = ""
    channels_last = False  # weights are plain inputs whose layout the build may choose
    one_module = True  # every level must export the same graph

    def check(self, family: str) -> None:
        if family == "structured":
            raise ConfigError(f"strategy {self.name} needs every level to have the same weight shapes; structured "
                              f"width changes them: use --strategy per-level")

    def networks(self, ckpt, alphas, example) -> list[LevelNet]:
        raise NotImplementedError

    def weights_member(self, index: int) -> str:
        return art.level_weights_member(index)


class PerLevel(Strategy):
    name = "per-level"
    channels_last = True
    one_module = False

    def check(self, family: str) -> None:
        pass

    def networks(self, ckpt, alphas, example) -> list[LevelNet]:
        from tvm_build.graph import level_network

        nets = [level_network(ckpt.model, a, example) for a in alphas]
        return [LevelNet(net, net, (example,)) for net in nets]


class WeightsAsInput(Strategy):
    name = "weights-as-input"

    def networks(self, ckpt, alphas, example) -> list[LevelNet]:
        from tvm_build.graph import weights_template

        nets = [weights_template(ckpt.model, a, example) for a in alphas]
        return [LevelNet(net, net, (example,)) for net in nets]


class AlphaInput(Strategy):
    name = "alpha-input"

    def networks(self, ckpt, alphas, example) -> list[LevelNet]:
        from tvm_build import alpha_graph

        return [LevelNet(level, level.export_net, level.export_args(example), level.extra_inputs)
                for level in alpha_graph.networks(ckpt, alphas, example)]

    def weights_member(self, index: int) -> str:
        return art.ENDPOINTS_MEMBER  # the levels share the two endpoints; a level is only its alpha


STRATEGIES = {s.name: s for s in (PerLevel(), WeightsAsInput(), AlphaInput())}


def strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
