"""The README's examples stay true: every ```python block runs as written (each in a fresh namespace, so a
block must be self-contained), and the zoo commands it shows name only data sets their command lines accept."""
import os
import re

import pytest

from magep import zoo_recipes
from transformer_nfn import zoo as transformer_zoo

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _read() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def python_blocks(text: str) -> list[tuple[str, str]]:
    """``[(id, source)]`` of the fenced ```python blocks; id = the heading above the block (+ its index)."""
    blocks, heading = [], "top"
    for match in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        if match.group(1):
            heading = match.group(1).lstrip("#").strip()
        else:
            blocks.append((f"{len(blocks)}: {heading}", match.group(2)))
    return blocks


BLOCKS = python_blocks(_read())


def test_readme_has_the_package_examples():
    headings = " ".join(name for name, _ in BLOCKS)
    for package in ("common", "Training", "magep", "transformer_nfn", "tsw_sl"):
        assert package in headings, f"no python block under a heading naming {package}: {headings}"


@pytest.mark.parametrize("source", [s for _, s in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_python_block_runs_as_written(source):
    exec(compile(source, README, "exec"), {"__name__": "readme_block"})


def test_block_extraction_keeps_order_and_headings():
    text = "# A\n```python\nx = 1\n```\n## B\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [("0: A", "x = 1\n"), ("1: B", "y = 2\n")]


# `python -m <module> [kind] --dataset a|b|c`: the data sets each command line accepts (its argparse choices).
ACCEPTED = {
    ("magep.zoo", "cnn"): set(zoo_recipes.CNN_DATASETS),
    ("magep.zoo", "siren"): set(zoo_recipes.SIREN_DATASETS),
    ("transformer_nfn.zoo", ""): set(transformer_zoo.DATASETS),
}


def test_zoo_commands_name_accepted_datasets():
    found = re.findall(r"python -m ([\w.]+\.zoo)((?: \w+)?) --dataset ([\w|]+)", _read())
    assert {(module, kind.strip()) for module, kind, _ in found} == set(ACCEPTED), found
    for module, kind, names in found:
        assert set(names.split("|")) == ACCEPTED[module, kind.strip()], (module, kind, names)
