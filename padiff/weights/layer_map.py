"""LayerMap: the user's word on which layers pair up and which to leave out."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Dict, List, Tuple

from ..errors import PadiffError
from ..frameworks import adapter_for, adapters


def _check_layer(obj, what: str):
    ad = adapter_for(obj, what)
    if not ad.is_layer(obj):
        kinds = " or ".join(a.layer_class for a in adapters())
        raise PadiffError(f"The {what} must be a layer ({kinds}), got a {type(obj).__name__}.")
    return obj


class _MapView(MutableMapping):
    """``layer_map.map``: a live dict of the pairs given by hand."""

    def __init__(self, owner: "LayerMap"):
        self._owner = owner

    def __getitem__(self, key):
        for a, b in self._owner._pairs:
            if a is key:
                return b
        raise KeyError(key)

    def __setitem__(self, key, value):
        self._owner.add(key, value)

    def __delitem__(self, key):
        before = len(self._owner._pairs)
        self._owner._pairs = [(a, b) for a, b in self._owner._pairs if a is not key]
        self._owner._mapped_ids = None
        if len(self._owner._pairs) == before:
            raise KeyError(key)

    def __iter__(self):
        return iter([a for a, _ in self._owner._pairs])

    def __len__(self):
        return len(self._owner._pairs)

    def __repr__(self):
        return "{" + ", ".join(f"{type(a).__name__}: {type(b).__name__}" for a, b in self._owner._pairs) + "}"


class LayerMap:
    """Pairs of sublayers and layers to leave out.

    * ``map = {layer_of_one_model: layer_of_the_other}`` (or ``add(a, b)``) pairs two
      sublayers by hand. A pair is copied and compared as a whole: a rule registered for
      the two classes converts it, or else padiff pairs its insides by structure, so the two
      sides may be built differently. Setting ``map`` adds to the pairs already there; a
      layer paired again takes its new partner.
    * ``ignore(layer)`` leaves a layer's own weights out (its sublayers are still walked);
      ``ignore_recursively(layer)`` leaves the layer and everything inside it out.
    * ``auto(model_a, model_b)`` pairs the layers with weights by structure, prints the
      pairs and the layers it could not pair, and records them here; pairs given by hand
      (before or after) win over the ones it found. (``padiff.LayerMap`` adds it: the matching
      is ``auto_map.py``'s, the printing ``report/weights.py``'s; this class is the data.)
    """

    def __init__(self):
        self._pairs: List[Tuple[object, object]] = []  # by hand: copied and compared as a whole
        self._auto: List[Tuple[object, object, bool]] = []  # found by auto: (a, b, as a whole)
        self._ignored: Dict[int, object] = {}
        self._ignored_deep: Dict[int, object] = {}
        self._mapped_ids = None  # cache of is_mapped, dropped on every change

    # --- the seeds' interface --------------------------------------------------------------
    @property
    def map(self) -> MutableMapping:
        return _MapView(self)

    @map.setter
    def map(self, pairs) -> None:
        if not hasattr(pairs, "items"):
            raise PadiffError("LayerMap.map must be a dict {layer_of_one_model: layer_of_the_other}, got a "
                              f"{type(pairs).__name__}.")
        for a, b in list(pairs.items()):
            self.add(a, b)

    def add(self, a, b) -> None:
        """Pair layer ``a`` of one model with layer ``b`` of the other."""
        _check_layer(a, "LayerMap key")
        _check_layer(b, "LayerMap value")
        if a is b:
            raise PadiffError(f"LayerMap pairs a {type(a).__name__} with itself: pair a layer of one model with "
                              "the matching layer of the other model.")
        self._pairs = [(x, y) for x, y in self._pairs if x is not a and y is not b and x is not b and y is not a]
        self._pairs.append((a, b))
        self._mapped_ids = None

    def ignore(self, layer) -> None:
        """Leave this layer's own weights out (its sublayers are still walked)."""
        for one in layer if isinstance(layer, (list, tuple)) else [layer]:
            self._ignored[id(_check_layer(one, "argument of LayerMap.ignore"))] = one

    def ignore_recursively(self, layer) -> None:
        """Leave this layer and everything inside it out."""
        for one in layer if isinstance(layer, (list, tuple)) else [layer]:
            self._ignored_deep[id(_check_layer(one, "argument of LayerMap.ignore_recursively"))] = one

    @classmethod
    def create_from(cls, value) -> "LayerMap":
        """A LayerMap from what a user may pass as ``layer_map``: None, a LayerMap, or a dict
        {layer_of_one_model: layer_of_the_other}."""
        if value is None or isinstance(value, LayerMap):
            return value
        if hasattr(value, "items"):
            lm = cls()
            lm.map = value
            return lm
        raise PadiffError(f"layer_map must be a padiff.LayerMap or a dict {{layer_a: layer_b}}, got a "
                          f"{type(value).__name__}.")

    # --- queries used by padiff ------------------------------------------------------------
    def has_pairs(self) -> bool:
        return bool(self._pairs) or bool(self._auto)

    def _taken(self):
        return {id(x) for pair in self._pairs for x in pair}

    def _auto_kept(self):
        taken = self._taken()
        return [(a, b, w) for a, b, w in self._auto if id(a) not in taken and id(b) not in taken]

    def pairs(self) -> List[Tuple[object, object]]:
        """Pairs copied and compared as a whole: by hand, and those ``auto`` found as such."""
        return list(self._pairs) + [(a, b) for a, b, w in self._auto_kept() if w]

    def unit_pairs(self) -> List[Tuple[object, object]]:
        """Every pair for copying weights, the ones given by hand first."""
        return list(self._pairs) + [(a, b) for a, b, _ in self._auto_kept()]

    def is_ignored(self, layer) -> bool:
        return id(layer) in self._ignored or id(layer) in self._ignored_deep

    def is_ignored_recursively(self, layer) -> bool:
        return id(layer) in self._ignored_deep

    def is_mapped(self, layer) -> bool:
        if self._mapped_ids is None:
            self._mapped_ids = {id(x) for pair in self.pairs() for x in pair}
        return id(layer) in self._mapped_ids

    def stops(self, layer) -> bool:
        """True where a walk must not enter the layer's sublayers."""
        return id(layer) in self._ignored_deep or self.is_mapped(layer)

    # --- used by auto ----------------------------------------------------------------------
    def clear_auto(self) -> None:
        self._auto = []
        self._mapped_ids = None

    def set_auto(self, found) -> None:
        self._auto = list(found)
        self._mapped_ids = None

    def __repr__(self) -> str:
        return (f"LayerMap({len(self._pairs)} pairs by hand, {len(self._auto)} found by auto, "
                f"{len(self._ignored)} ignored, {len(self._ignored_deep)} ignored recursively)")
