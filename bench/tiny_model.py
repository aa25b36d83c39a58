"""A tiny random model of a family Korean chat models come in (2 layers, width 32), with a tokenizer trained on the
embedded sample and a ChatML chat template: the tests' stand-in, for trying `--template chat` end to end offline.

    python bench/tiny_model.py qwen2 runs/tiny-qwen2      # or llama, gpt_neox, gemma2, exaone4, hyperclovax
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FAMILIES, make_tiny_family  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in FAMILIES:
        raise SystemExit(f"usage: python bench/tiny_model.py {{{','.join(FAMILIES)}}} OUT")
    print(make_tiny_family(Path(sys.argv[2]), sys.argv[1]))
