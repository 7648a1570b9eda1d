"""LayerMap: the user's word on which layers pair up and which to leave out."""

from __future__ import annotations

from typing import Dict, List, Tuple

from ..errors import PadiffError


class LayerMap:
    """Pairs of sublayers (``map``) and layers to leave out (``ignore``,
    ``ignore_recursively``). A mapped pair is copied and compared as a whole: padiff does not
    look inside it, so its two sides may be built differently."""

    def __init__(self):
        self._pairs: List[Tuple[object, object]] = []
        self._ignored: Dict[int, object] = {}
        self._ignored_deep: Dict[int, object] = {}

    # --- the seeds' interface --------------------------------------------------------------
    @property
    def map(self) -> Dict[object, object]:
        return dict(self._pairs)

    @map.setter
    def map(self, pairs) -> None:
        if not hasattr(pairs, "items"):
            raise PadiffError("LayerMap.map must be a dict {layer_of_one_model: layer_of_the_other}.")
        self._pairs = list(pairs.items())

    def add(self, a, b) -> None:
        """Pair layer ``a`` of one model with layer ``b`` of the other."""
        self._pairs.append((a, b))

    def ignore(self, layer) -> None:
        """Leave this layer out (its sublayers are still walked)."""
        for one in layer if isinstance(layer, (list, tuple)) else [layer]:
            self._ignored[id(one)] = one

    def ignore_recursively(self, layer) -> None:
        """Leave this layer and everything inside it out."""
        for one in layer if isinstance(layer, (list, tuple)) else [layer]:
            self._ignored_deep[id(one)] = one

    def auto(self, a, b):
        from .auto import auto_pairs

        return auto_pairs(self, a, b)

    # --- queries used by padiff ------------------------------------------------------------
    def has_pairs(self) -> bool:
        return bool(self._pairs)

    def pairs(self) -> List[Tuple[object, object]]:
        return list(self._pairs)

    def is_ignored(self, layer) -> bool:
        return id(layer) in self._ignored or id(layer) in self._ignored_deep

    def is_mapped(self, layer) -> bool:
        return any(layer is a or layer is b for a, b in self._pairs)

    def stops(self, layer) -> bool:
        """True where a walk must not enter the layer's sublayers."""
        return id(layer) in self._ignored_deep or self.is_mapped(layer)

    def __repr__(self) -> str:
        return (f"LayerMap({len(self._pairs)} pairs, {len(self._ignored)} ignored, "
                f"{len(self._ignored_deep)} ignored recursively)")
