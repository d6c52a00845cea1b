package sensor

// The kernel programs are compiled by `make generate` (clang, llvm,
// libbpf-dev, bpftool; see README.md) into sensor_bpfel.o, which bpf2go
// embeds in sensor_bpfel.go. Both are committed so that building the
// collector needs no clang. vmlinux.h is generated from the build host's BTF
// and not committed: CO-RE relocates field offsets when the programs load.
//go:generate sh -c "bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h"
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-global-types sensor bpf/sensor.bpf.c -- -I./bpf
