"""DerivedState: what a module decodes from its tensors never outlives them."""

from __future__ import annotations

import torch

from netslim.core.derived import DerivedState


class Doubled(DerivedState):
    """Caches 2 * w; counts its decodes."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w)
        self.decodes = 0
        self._reset_derived()

    def _reset_derived(self) -> None:
        self._cache = None

    def forward(self) -> torch.Tensor:
        if self._cache is None:
            self._cache, self.decodes = 2 * self.w, self.decodes + 1
        return self._cache


def test_cache_is_reused_then_dropped_on_cast_and_load():
    m = Doubled(torch.tensor([1.0, 2.0]))
    m(), m()
    assert m.decodes == 1

    m.double()  # _apply: the cached float32 copy goes with the old tensor
    assert m().dtype == torch.float64 and m.decodes == 2

    m.load_state_dict({"w": torch.tensor([5.0, 7.0], dtype=torch.float64)})
    assert torch.equal(m(), torch.tensor([10.0, 14.0], dtype=torch.float64)) and m.decodes == 3


def test_children_are_reset_through_the_parent():
    parent = torch.nn.Sequential(Doubled(torch.ones(3)))
    parent[0]()
    parent.half()
    assert parent[0]().dtype == torch.float16 and parent[0].decodes == 2
