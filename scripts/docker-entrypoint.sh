#!/bin/sh
# The image's entrypoint: thread counts for the cores this container may use, then the command.
#
# torch (and the OpenMP/MKL pools under it) would otherwise start one thread per *host* core,
# even under `docker run --cpus 2`, and threads fighting over two cores are slower than two.
# MONOLITH_TORCH_THREADS, when set, is the count; else the container's CPU quota (cgroup v2
# cpu.max, or v1 cfs_quota/period), else the CPUs it may run on (nproc), divided among
# MONOLITH_WORKERS processes. OMP_NUM_THREADS and MKL_NUM_THREADS follow unless set.
set -eu

cores() {
    if [ -r /sys/fs/cgroup/cpu.max ]; then
        read -r quota period < /sys/fs/cgroup/cpu.max
    elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
        quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
        period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    else
        quota=max period=1
    fi
    if [ "$quota" != "max" ] && [ "$quota" -gt 0 ] 2>/dev/null; then
        echo $(( (quota + period - 1) / period ))
    else
        nproc
    fi
}

if [ -z "${MONOLITH_TORCH_THREADS:-}" ] || [ "${MONOLITH_TORCH_THREADS}" = "0" ]; then
    threads=$(( $(cores) / ${MONOLITH_WORKERS:-1} ))
    [ "$threads" -ge 1 ] || threads=1
    MONOLITH_TORCH_THREADS=$threads
fi
export MONOLITH_TORCH_THREADS
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$MONOLITH_TORCH_THREADS}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$MONOLITH_TORCH_THREADS}"
exec "$@"
