"""CodeDance-JAX: executable visual reasoning with Qwen2.5-VL on JAX."""
import os
import re

# XLA's CPU backend can run two independent collectives of one program in different orders on
# the devices of one process (its concurrency-optimised scheduler), and a run of the sharded
# train step on several CPU devices of one process then deadlocks in a rendezvous (seen in the
# SFT binary test). Turned off only there: with one device per process (multi-process CPU jobs
# over gloo) turning it off made the processes' collectives mismatch instead. XLA reads the flags
# when the first backend starts, which is after this import in every binary. TPU is unaffected.
_CPU_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"
_xla_flags = os.environ.get("XLA_FLAGS", "")
_devices = re.search(r"xla_force_host_platform_device_count=(\d+)", _xla_flags)
if _devices and int(_devices.group(1)) > 1 and _CPU_SCHEDULER_FLAG not in _xla_flags:
    os.environ["XLA_FLAGS"] = f"{_xla_flags} --{_CPU_SCHEDULER_FLAG}=false".strip()
