"""What both eBPF sensors (``attribution/ebpf/``, ``files/ebpf/``) share: ``bpf/build-sensor.sh``, the
build each sensor's ``build.sh`` runs with its own program names."""
