"""Every binary (a module that calls absl's app.run) imports into one process with the others:
their flags are defined under __main__ or under distinct names. A duplicate flag made pytest fail
at collection whenever two binaries' tests met in one run."""
import importlib
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("codedance_jax", "train", "rollout", "models", "sandbox", "experiments", "benchmarks")


def binaries() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "app.run(" in path.read_text():
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_all_binaries_import_into_one_process():
    modules = binaries()
    assert {"train.sft", "train.grpo", "codedance_jax.eval.main", "train.demo"} <= set(modules), modules
    failures = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the test reports every binary that fails, not just the first
            failures[name] = f"{type(exc).__name__}: {exc}"
    assert not failures, failures
