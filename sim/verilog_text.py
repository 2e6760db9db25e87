"""Verilog text passes for simulation builds.

Amaranth initialises every memory with one assignment per word inside an ``initial`` block; a
16384-word weight memory becomes 16384 lines that Verilator then compiles into straight-line
C++ for minutes. Where a memory's initial contents are all zeros (every memory of the core),
the same semantics fit in one loop.
"""

import re

__all__ = ["compact_zero_memory_init"]

_INIT_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)initial begin\n"
    r"(?P<body>(?:[ \t]*(?P<name>[\\\w$.]+ ?)\[\d+\] = \d+'[hbd]0+;\n)+)"
    r"[ \t]*end\n", re.M)
_LINE = re.compile(r"^[ \t]*(?P<name>[\\\w$.]+ ?)\[(?P<index>\d+)\] = \d+'[hbd]0+;$", re.M)


def compact_zero_memory_init(text):
    """Replace each all-zero memory ``initial`` block by an equivalent ``for`` loop."""
    count = 0

    def replace(match):
        nonlocal count
        lines = _LINE.findall(match["body"])
        names = {name for name, _ in lines}
        indices = sorted(int(index) for _, index in lines)
        if len(names) != 1 or indices != list(range(len(indices))):
            return match[0]
        name, indent = names.pop(), match["indent"]
        count += 1
        loop_var = f"gsaccel_init_{count}"
        return (f"{indent}integer {loop_var};\n"
                f"{indent}initial for ({loop_var} = 0; {loop_var} < {len(indices)}; "
                f"{loop_var} = {loop_var} + 1) {name}[{loop_var}] = 0;\n")

    return _INIT_BLOCK.sub(replace, text)
