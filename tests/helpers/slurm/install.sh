#!/bin/sh
# Installs what tests/helpers/slurm_cluster.py needs, as root on Debian 12: SLURM 22.05 (controller, node
# daemon, client commands) and munge. 8 packages, 3.5 MB, about 8 s with `apt-get update`.
# The meta package slurm-wlm would also work, but brings 42 packages (HDF5, RRD, ROCm plugins...).
# Debian's service scripts may start munge (with /etc/munge/munge.key) and fail to start slurmctld
# and slurmd (no /etc/slurm/slurm.conf); the test cluster uses none of them: its own key, socket,
# config and ports.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
