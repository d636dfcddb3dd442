"""CodeDance-JAX: executable visual reasoning with Qwen2.5-VL on JAX."""
import os

# XLA's CPU backend can run two independent collectives of one program in different orders on
# different devices (its concurrency-optimised scheduler), and a multi-device CPU run of the
# sharded train step then deadlocks in a rendezvous (seen in the SFT binary test, not on TPU).
# XLA reads the flags when the first backend starts, which is after this import in every binary.
_CPU_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"
if _CPU_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_CPU_SCHEDULER_FLAG}=false".strip()
