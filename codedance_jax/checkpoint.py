"""Training checkpoints: orbax CheckpointManager with asynchronous saves, keep-N and sharded
restore. A save is committed by an atomic rename, so a crash mid-save leaves the previous
checkpoints intact; the data iterator's position is saved with the state (as JSON)."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class TrainCheckpointer:
    def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=asynchronous)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Starts an (asynchronous) save of `state` and the data iterator's position at `step`."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into `abstract_state`'s structure, dtypes and shardings (ShapeDtypeStructs)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the given shardings, for restoring without allocating first."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
