"""One module per benchmark: its reader(s), prompt and scorer; importing registers them."""
from codedance_jax.eval.benchmarks import (chartqa, codedance_parquet, countbenchqa, hrbench, mathverse,  # noqa: F401
                                           mathvision, mathvista, synthetic, vstar, wemath)
