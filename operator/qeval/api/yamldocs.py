"""YAML read the way the API server reads it: a duplicate key is an error, not last-wins,
and alias expansion is bounded (kubectl refuses "excessive aliasing" too).

PyYAML's safe loader, with a constructor that refuses a key met twice in one mapping
(naming both lines) and a check of each document's size with every alias expanded, made
on the composed node graph before anything is built from it: a billion-laughs document
is refused in microseconds instead of expanding into gigabytes later.
"""

from __future__ import annotations

from typing import Any

import yaml

# A spec has a few hundred nodes; the largest valid EvalRun (32 candidates, 64 tasks,
# 16 scenarios, every field set) has under 5,000. Expanded beyond this, it is an attack.
MAX_NODES = 20_000
MAX_BYTES = 3 * 1024 * 1024  # the API server refuses a request body above 3 MiB
_MERGE = "tag:yaml.org,2002:merge"


class YamlError(ValueError):
    """A document that is not read: the message names the line."""


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # `<<: *base` overrides by design
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor says so
                continue
            if first is not None:
                raise YamlError(
                    f"line {_line(key_node)}: duplicate key {str(key)[:80]!r} "
                    f"(first on line {first}); keep one"
                )
            seen[key] = _line(key_node)
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


def expanded_nodes(node: yaml.Node, limit: int = MAX_NODES) -> int:
    """How many nodes the document has with every alias expanded (counted up to ``limit``
    + 1); raise YamlError on an alias to a node that contains it (a recursive document)."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in memo:
            return memo[id(n)]
        if id(n) in active:
            raise YamlError(f"line {_line(n)}: an alias refers to a node that contains it")
        active.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total = min(total + size(child), limit + 1)
        elif isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                total = min(total + size(key) + size(value), limit + 1)
        active.discard(id(n))
        memo[id(n)] = total
        return total

    return size(node)


def load_all(text: str) -> list[tuple[int, Any]]:
    """Every non-empty document of ``text`` with the line it starts on."""
    if len(text.encode()) > MAX_BYTES:
        raise YamlError(f"{len(text.encode()):,} bytes; the API server takes at most {MAX_BYTES:,}")
    loader = _Loader(text)
    out = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if expanded_nodes(node) > MAX_NODES:
                raise YamlError(
                    f"line {_line(node)}: more than {MAX_NODES:,} values with its aliases "
                    "expanded (excessive aliasing); write the values out"
                )
            doc = loader.construct_document(node)
            if doc is not None:
                out.append((_line(node), doc))
    except RecursionError:
        raise YamlError("nested too deeply") from None
    except yaml.YAMLError as e:
        raise YamlError(f"not valid YAML: {e}") from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    return out


def load_one(text: str) -> Any:
    """A single YAML document (None if empty), read like ``load_all``."""
    docs = load_all(text)
    if len(docs) > 1:
        raise YamlError(f"line {docs[1][0]}: a second document; give one")
    return docs[0][1] if docs else None
