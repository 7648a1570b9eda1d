"""Model trees in the seeds' shape, with ``<---  *** HERE ***`` on the marked line.

    Torch Model
    =========================
    (net) SimpleModule
    |--- (net) Linear
    +--- (net) Linear    <---  *** HERE ***
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

HERE = "<---  *** HERE ***"


def render_tree(
    root,
    children: Callable[[object], Sequence[object]],
    label: Callable[[object], str],
    *,
    title: str = "",
    marks: Optional[Dict[int, str]] = None,
    path: Optional[Callable[[object], str]] = None,
) -> List[str]:
    """Lines of a tree. ``marks`` maps id(node) to a suffix (HERE, "(skip)", ...);
    with ``path`` each line also carries the node's dotted path (PADIFF_PATH_LOG)."""
    marks = marks or {}
    lines: List[str] = []
    if title:
        lines += [title, "=" * 25]

    def line(node, prefix: str, branch: str):
        text = prefix + branch + label(node)
        if path is not None:
            text += f"  ({path(node)})"
        mark = marks.get(id(node))
        if mark:
            text += "    " + mark
        lines.append(text)

    def visit(node, prefix: str, is_last: bool, is_root: bool):
        if is_root:
            line(node, "", "")
            child_prefix = ""
        else:
            line(node, prefix, "+--- " if is_last else "|--- ")
            child_prefix = prefix + ("     " if is_last else "|    ")
        kids = list(children(node))
        for i, kid in enumerate(kids):
            visit(kid, child_prefix, i == len(kids) - 1, False)

    visit(root, "", True, True)
    return lines


def trace_tree(trace, *, here_node=None, extra_marks: Optional[Dict[int, str]] = None, title: str = "",
               show_path: bool = False, include: Optional[Callable[[object], bool]] = None) -> List[str]:
    """The call tree of a trace: ``(net)`` layer calls and ``(api)`` framework calls."""
    marks = dict(extra_marks or {})
    if here_node is not None:
        marks[id(here_node)] = (marks.get(id(here_node), "") + " " + HERE).strip()
    if trace.root is None:
        return [title, "=" * 25, "(the model was not called)"] if title else ["(the model was not called)"]

    def kids(n):
        return [c for c in n.children if include is None or include(c)]

    return render_tree(trace.root, kids, lambda n: f"({n.kind}) {n.name}", title=title, marks=marks,
                       path=(lambda n: n.label()) if show_path else None)


def focus_nodes(node, keep_siblings: int = 3):
    """Nodes worth drawing in a long tree: the path to ``node`` and a few of its neighbours."""
    keep = set()
    cur = node
    while cur is not None:
        keep.add(id(cur))
        parent = cur.parent
        if parent is not None:
            sibs = parent.children
            i = next((k for k, s in enumerate(sibs) if s is cur), 0)
            for s in sibs[max(0, i - keep_siblings): i + keep_siblings + 1]:
                keep.add(id(s))
        cur = parent
    return keep
