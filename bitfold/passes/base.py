"""The pass contract: ``run(gm) -> PassResult(gm, modified)``, with pre/post-conditions.

Modelled on torch.fx's ``PassBase`` and onnx-ir's passes: a pass implements :meth:`Pass.call`;
:meth:`Pass.run` wraps it with :meth:`Pass.requires` before and :meth:`Pass.ensures` after,
lints the graph and recompiles the module. A pass declares whether it preserves the
function the graph computes (``preserves_semantics``) and within what relative tolerance,
so the :class:`~bitfold.passes.manager.PassManager` can verify it.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import List

from torch import fx


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) module and whether anything changed."""

    graph_module: fx.GraphModule
    modified: bool
    #: Human-readable notes, e.g. why a pattern was left alone.
    notes: List[str] = field(default_factory=list)


class PassError(RuntimeError):
    """A pass's pre- or post-condition failed, or the pass itself raised."""


class Pass(abc.ABC):
    """A graph transformation over bitfold's canonical FX form."""

    #: True when the rewritten graph computes the same function (up to ``tolerance``).
    preserves_semantics: bool = True
    #: Largest relative output change the rewrite may cause (float reassociation).
    tolerance: float = 1e-5

    @property
    def name(self) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    def requires(self, gm: fx.GraphModule) -> None:
        """Raise :class:`PassError` if ``gm`` is not fit for this pass."""

    @abc.abstractmethod
    def call(self, gm: fx.GraphModule) -> PassResult:
        """Rewrite ``gm`` (in place or not) and say whether it changed."""

    def ensures(self, gm: fx.GraphModule) -> None:
        """Raise :class:`PassError` if the pass's promise does not hold on ``gm``."""

    def run(self, gm: fx.GraphModule) -> PassResult:
        self.requires(gm)
        result = self.call(gm)
        if result.modified:
            result.graph_module.graph.lint()
            result.graph_module.recompile()
        self.ensures(result.graph_module)
        return result

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        return self.run(gm)

    def __repr__(self) -> str:
        return f"<pass {self.name}>"
