"""Selective function recording (SFR): which units of a workflow record their output.

Recording an output costs a write; re-executing a read-only unit costs nothing but a
repeat of its reads. The rule (computed once per workflow, at registration, in O(V+E)),
on the DAG whose nodes are units (transaction groups collapsed) and steps:

    walk the nodes in reverse topological order; the *frontier* F(v) is the union over
    v's children c of {c} if c is recorded, else F(c); plus the sink if v's output is
    the workflow's output. Record v if it writes, is a step, or |F(v)| >= 2.

A read-only node whose output reaches a single recorded consumer (or only the workflow
output) may be re-executed on a retry: whatever it returns then, only one consumer ever
uses it, so no two parts of the workflow can see different values. A node whose output
reaches two consumers must be recorded, or a retry could feed them different values.

Only ``|F(v)| >= 2`` matters, so each frontier is kept to at most two members, which
keeps the walk linear in nodes plus edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

#: The workflow's output, as a member of frontiers.
SINK = "<output>"


def recorded_nodes(
    order: Sequence[str],
    children: Mapping[str, Sequence[str]],
    must_record: Set[str],
    feeds_output: Set[str],
) -> set[str]:
    """The nodes SFR records.

    Args:
        order: every node, in a topological order (parents before children).
        children: each node's children (nodes that read its output).
        must_record: nodes that write or are steps.
        feeds_output: nodes whose output is (part of) the workflow's output.
    """
    recorded: set[str] = set()
    frontier: dict[str, frozenset[str]] = {}
    for node in reversed(order):
        found: set[str] = {SINK} if node in feeds_output else set()
        for child in children.get(node, ()):
            if len(found) >= 2:
                break
            if child in recorded:
                found.add(child)
            else:
                found.update(frontier[child])
        if len(found) > 2:
            found = set(sorted(found)[:2])
        frontier[node] = frozenset(found)
        if node in must_record or len(found) >= 2:
            recorded.add(node)
    return recorded
