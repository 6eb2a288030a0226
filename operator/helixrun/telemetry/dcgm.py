"""The NVIDIA DCGM exporter series the dashboards and alerts read, and how they join a run.

dcgm-exporter (in Kubernetes mode) labels each GPU's series with the pod and
namespace using it; the trainer's series carry the same `pod` and `namespace`
target labels from the PodMonitor, so `helixrun_train_info` joins a GPU to its run.
If your dcgm-exporter ServiceMonitor keeps `honorLabels: false`, Prometheus
renames those labels `exported_pod`/`exported_namespace`: set honorLabels true there.
"""

GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # percent
FB_USED = "DCGM_FI_DEV_FB_USED"  # MiB
FB_FREE = "DCGM_FI_DEV_FB_FREE"  # MiB
DCGM_METRICS = (GPU_UTIL, FB_USED, FB_FREE)

POD_LABEL = "pod"
NAMESPACE_LABEL = "namespace"


def for_run(expr: str, run_selector: str = "", by: str = "run") -> str:
    """Join a per-GPU DCGM expression to the runs' trainer pods, adding the `by` label(s) of helixrun_train_info."""
    return (
        f"({expr}) * on ({NAMESPACE_LABEL}, {POD_LABEL}) group_left ({by}) "
        f"max by ({NAMESPACE_LABEL}, {POD_LABEL}, {by}) (helixrun_train_info{run_selector})"
    )
