// SPDX-License-Identifier: GPL-2.0
//
// whalewatch kernel sensor: tracepoint programs that report what processes in
// containers do (exec, fork, exit, file changes, connections, privileged
// system calls) through one ring buffer. Only tracepoints are used: fentry,
// LSM and kprobes are not available on every host the collector runs on.
//
// A process is "in a container" when the leaf name of its memory cgroup is a
// container id: 64 lowercase hex digits ("/docker/<id>", cgroupfs driver) or
// "<runtime>-<id>.scope" (systemd driver). The decision is cached per tgid and
// forgotten at exec and exit, when a process can change its cgroup.
//
// Records are fixed-size structs shared with sensor.go's decoder (record.go);
// change both together. Every string is copied bounded; user space treats all
// of it as hostile.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define CID_LEN 64
#define PATH_LEN 512
#define AUX_LEN 64
#define ARGS_LEN 2048
#define PREFIX_LEN 128

// Record kinds (record.go: kind*).
enum {
	K_EXEC = 1,
	K_FORK = 2,
	K_EXIT = 3,
	K_SYSCALL = 4,
	K_SOCKSTATE = 5,
};

// System calls (record.go: sc*). Stable numbers of this program, not the
// architecture's syscall numbers.
enum {
	SC_OPENAT = 1, SC_OPENAT2, SC_OPEN, SC_CREAT,
	SC_RENAME, SC_RENAMEAT, SC_RENAMEAT2,
	SC_UNLINK, SC_UNLINKAT, SC_RMDIR,
	SC_CHMOD, SC_FCHMOD, SC_FCHMODAT, SC_FCHMODAT2,
	SC_LINK, SC_LINKAT, SC_SYMLINK, SC_SYMLINKAT,
	SC_TRUNCATE, SC_FTRUNCATE,
	SC_CONNECT, SC_ACCEPT, SC_ACCEPT4,
	SC_MOUNT, SC_UMOUNT2, SC_UNSHARE, SC_SETNS, SC_CLONE, SC_CLONE3,
	SC_INIT_MODULE, SC_FINIT_MODULE, SC_DELETE_MODULE,
	SC_PTRACE, SC_PVM_READV, SC_PVM_WRITEV, SC_BPF, SC_MEMFD_CREATE,
	SC_EXECVEAT, SC_CHROOT, SC_PIVOT_ROOT,
	SC_SETUID, SC_SETGID, SC_SETREUID, SC_SETREGID, SC_SETRESUID,
	SC_SETRESGID, SC_SETFSUID, SC_SETFSGID, SC_CAPSET,
	SC_KILL, SC_TKILL, SC_TGKILL,
	SC_MAX,
};

// Flags of struct sys_rec.flags.
#define F_READ_SENSITIVE 1 // an open for reading that matched a sensitive prefix
#define F_RESOLVED 2       // path2 holds the opened file's absolute path (from its dentries)

#define O_ACCMODE 3
#define O_RDONLY 0
#define O_CREAT 0100
#define O_TRUNC 01000
#define AT_FDCWD -100
#define AT_EMPTY_PATH 0x1000
#define CLONE_NS_MASK (0x00000080ULL | 0x00020000ULL | 0x02000000ULL | 0x04000000ULL | 0x08000000ULL | 0x10000000ULL | 0x20000000ULL | 0x40000000ULL)
#define EPERM 1
#define EACCES 13
#define EINPROGRESS 115
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

struct hdr {
	__u64 ts_ns; // bpf_ktime_get_ns at the event
	__u32 kind;
	__u32 pid; // tgid, host namespace
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u32 pad;
	__u64 start_ns; // the process's start (task->start_time of its leader)
	char cid[CID_LEN];
	char comm[16];
};

struct exec_rec {
	struct hdr h;
	__u32 ppid;
	__u32 args_len;    // bytes of argv read (NUL-separated)
	__u32 args_full;   // arg_end - arg_start: the real size
	__u16 stdio_mode[3];
	__u16 pad;
	__u32 stdio_rdev[3];
	__u32 pad2;
	char filename[PATH_LEN];
	char args[ARGS_LEN];
};

struct fork_rec {
	struct hdr h;
	__u32 child_pid;
	__u32 pad;
	__u64 child_start_ns;
};

struct exit_rec {
	struct hdr h;
	__s32 exit_code; // raw wait status (task->exit_code)
	__u32 pad;
};

struct sys_rec {
	struct hdr h;
	__u32 sc;
	__u32 flags;
	__s64 ret;
	__u64 args[6];
	// Socket calls: both ends of the socket (addresses in network order).
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 proto; // IPPROTO_* of the socket (connect, accept)
	__u8 laddr[16];
	__u8 raddr[16];
	char aux[AUX_LEN];     // short string (mount type, memfd name, module name)
	// Records with one path end after it (sent with its length only);
	// records with two are sent whole.
	char path[PATH_LEN];   // the call's path (new name of a link/rename), AF_UNIX path
	char path2[PATH_LEN];  // second path (old name / target)
};

struct sockstate_rec {
	struct hdr h; // the process that created/connected/accepted the socket
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 protocol;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct cinfo {
	__u8 is;
	__u8 pad[7];
	char id[CID_LEN];
	char name[PREFIX_LEN]; // scratch for the kernfs name
};

struct stash {
	__u32 sc;
	__u32 flags;
	__u64 args[6];
};

struct sock_owner {
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	char cid[CID_LEN];
	char comm[16];
};

struct prefix_key {
	__u32 prefixlen;
	char data[PREFIX_LEN];
};

// Maps. Sizes of the ring buffer are set from Go before loading.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

// drops[0]: records lost because the ring buffer was full.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct cinfo);
} containers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct stash);
} stashes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_owner);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__type(key, struct prefix_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sensitive SEC(".maps");

// Per-CPU scratch space: records are built here and copied into the ring
// buffer with bpf_ringbuf_output (the BPF stack is 512 bytes).
union scratch_u {
	struct exec_rec exec;
	struct sys_rec sys;
	struct cinfo ci;
	struct prefix_key pk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, union scratch_u);
} scratch SEC(".maps");

static __always_inline void *scratch_slot(__u32 i)
{
	return bpf_map_lookup_elem(&scratch, &i);
}

static __always_inline void count_drop(void)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&drops, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
}

// Waking the reader for every record costs it more than the record. It is
// woken when a record lands in an empty ring at least WAKE_GAP_NS after the
// previous wakeup (the first record after a quiet spell goes at once), or
// when wake_bytes are waiting (set from Go to an eighth of the ring). Records
// in between are read by the reader's own poll (sensor.go: pollEvery) or by
// the drain that follows a wakeup.
volatile const __u64 wake_bytes = 1 << 20;
#define WAKE_GAP_NS 2000000ULL
__u64 last_wake = 0;

static __always_inline int output(void *rec, __u64 size)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail >= wake_bytes) {
		flags = BPF_RB_FORCE_WAKEUP;
	} else if (avail == 0) {
		__u64 now = bpf_ktime_get_ns();
		if (now - last_wake >= WAKE_GAP_NS) {
			last_wake = now;
			flags = BPF_RB_FORCE_WAKEUP;
		}
	}
	if (bpf_ringbuf_output(&events, rec, size, flags) != 0) {
		count_drop();
		return -1;
	}
	return 0;
}

static __always_inline int is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

// parse_cgroup_name sets ci->is and ci->id when the cgroup name at name
// is a container's.
static __always_inline void parse_cgroup_name(struct cinfo *ci, const char *name)
{
	ci->is = 0;
	if (!name)
		return;
	int n = bpf_probe_read_kernel_str(ci->name, sizeof(ci->name), name);
	if (n <= 0)
		return;
	int len = n - 1;
	int off;
	if (len == CID_LEN) {
		off = 0;
	} else if (len >= CID_LEN + 7 && len < PREFIX_LEN) {
		// "<runtime>-<id>.scope"
		int s = len - 6;
		if (s < 0 || s + 6 > PREFIX_LEN - 1)
			return;
		if (ci->name[s & (PREFIX_LEN - 1)] != '.' || ci->name[(s + 1) & (PREFIX_LEN - 1)] != 's' ||
		    ci->name[(s + 5) & (PREFIX_LEN - 1)] != 'e')
			return;
		off = s - CID_LEN;
		if (off < 1 || ci->name[(off - 1) & (PREFIX_LEN - 1)] != '-')
			return;
	} else {
		return;
	}
	off &= 63;
	for (int i = 0; i < CID_LEN; i++) {
		char c = ci->name[(off + i) & (PREFIX_LEN - 1)];
		if (!is_hex(c))
			return;
		ci->id[i] = c;
	}
	ci->is = 1;
}

// container_id fills ci for task t: its memory cgroup's name (cgroup v1, and
// v2 where the memory controller is enabled), else its cgroup v2 name.
static __always_inline void container_id(struct cinfo *ci, struct task_struct *t)
{
	struct css_set *cs = BPF_CORE_READ(t, cgroups);
	struct cgroup_subsys_state *css = NULL;
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	ci->is = 0;
	if (id >= 0 && id < 16) {
		bpf_core_read(&css, sizeof(css), &cs->subsys[id]);
		if (css)
			parse_cgroup_name(ci, BPF_CORE_READ(css, cgroup, kn, name));
	}
	if (!ci->is)
		parse_cgroup_name(ci, BPF_CORE_READ(cs, dfl_cgrp, kn, name));
}

// setup holds the processes the container runtime is still setting up
// (runc init and its children): they enter the container's cgroup before
// the container's first program runs, and their mounts, setuid and chmods are
// the runtime's, not the container's. A process is in setup from an exec
// made while its parent is outside any container and it still shares that
// parent's mount namespace (a container's own processes never do), until its
// next exec (the container's entrypoint or the `docker exec` command).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} setup SEC(".maps");

// current_container returns the cached container of the current process, or
// NULL when it is not in a container.
static __always_inline struct cinfo *current_container(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct cinfo *c = bpf_map_lookup_elem(&containers, &tgid);
	if (c)
		return c->is ? c : NULL;
	struct cinfo *s = scratch_slot(1);
	if (!s)
		return NULL;
	container_id(s, bpf_get_current_task_btf());
	if (s->is && bpf_map_lookup_elem(&setup, &tgid))
		s->is = 0; // the runtime setting the container up, not the container
	bpf_map_update_elem(&containers, &tgid, s, BPF_ANY);
	if (!s->is)
		return NULL;
	return bpf_map_lookup_elem(&containers, &tgid);
}

static __always_inline void fill_hdr(struct hdr *h, __u32 kind, struct cinfo *c)
{
	__u64 pt = bpf_get_current_pid_tgid();
	__u64 ug = bpf_get_current_uid_gid();
	h->ts_ns = bpf_ktime_get_ns();
	h->kind = kind;
	h->pid = pt >> 32;
	h->tid = (__u32)pt;
	h->uid = (__u32)ug;
	h->gid = ug >> 32;
	h->pad = 0;
	struct task_struct *t = bpf_get_current_task_btf();
	h->start_ns = BPF_CORE_READ(t, group_leader, start_time);
	__builtin_memcpy(h->cid, c->id, CID_LEN);
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

static __always_inline struct file *fd_file(struct task_struct *t, int fd)
{
	struct file *f = NULL;
	if (fd < 0)
		return NULL;
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned int)fd >= max)
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	bpf_core_read(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline struct sock *fd_sock(struct task_struct *t, int fd)
{
	struct file *f = fd_file(t, fd);
	if (!f)
		return NULL;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *so = BPF_CORE_READ(f, private_data);
	if (!so)
		return NULL;
	return BPF_CORE_READ(so, sk);
}

// ---------------------------------------------------------------- processes

// execveat_done reports a successful execveat of an fd (fileless exec):
// its sys_exit does not fire once the new program runs (the syscall number
// is gone with the old registers), so the exec itself closes the call.
static __always_inline void execveat_done(__u32 tgid, struct cinfo *c)
{
	__u32 key = tgid | 0x80000000;
	struct stash *xs = bpf_map_lookup_elem(&stashes, &key);
	if (!xs)
		return;
	struct stash st = *xs;
	bpf_map_delete_elem(&stashes, &key);
	if (st.sc != SC_EXECVEAT)
		return;
	struct sys_rec *sr = scratch_slot(0);
	if (!sr)
		return;
	__builtin_memset(sr, 0, offsetof(struct sys_rec, path) + 1);
	fill_hdr(&sr->h, K_SYSCALL, c);
	sr->sc = SC_EXECVEAT;
	sr->ret = 0;
	sr->args[0] = st.args[0];
	sr->args[4] = st.args[4];
	output(sr, offsetof(struct sys_rec, path) + 1);
}

SEC("tracepoint/sched/sched_process_exec")
int tp_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	// The cgroup may have changed since the cached decision (runc joins the
	// container's cgroup before it execs the container's process).
	bpf_map_delete_elem(&containers, &tgid);
	struct task_struct *t = bpf_get_current_task_btf();
	if (bpf_map_lookup_elem(&setup, &tgid)) {
		bpf_map_delete_elem(&setup, &tgid);
	} else {
		struct task_struct *parent = BPF_CORE_READ(t, real_parent);
		struct mnt_namespace *mine = BPF_CORE_READ(t, nsproxy, mnt_ns);
		struct mnt_namespace *theirs = BPF_CORE_READ(parent, nsproxy, mnt_ns);
		struct cinfo *pc = scratch_slot(1);
		if (!pc)
			return 0;
		container_id(pc, parent);
		if (!pc->is && mine == theirs) {
			__u8 one = 1;
			bpf_map_update_elem(&setup, &tgid, &one, BPF_ANY);
			return 0;
		}
	}
	struct cinfo *c = current_container();
	if (!c)
		return 0;
	struct exec_rec *r = scratch_slot(0);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_EXEC, c);
	r->ppid = BPF_CORE_READ(t, real_parent, tgid);

	unsigned int off = ctx->__data_loc_filename & 0xFFFF;
	bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (void *)ctx + off);

	unsigned long start = BPF_CORE_READ(t, mm, arg_start);
	unsigned long end = BPF_CORE_READ(t, mm, arg_end);
	unsigned long n = end > start ? end - start : 0;
	r->args_full = n;
	if (n > ARGS_LEN - 1)
		n = ARGS_LEN - 1;
	r->args_len = 0;
	n &= ARGS_LEN - 1;
	if (n > 0 && bpf_probe_read_user(r->args, n, (void *)start) == 0)
		r->args_len = n;

	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	for (int i = 0; i < 3; i++) {
		struct file *f = NULL;
		r->stdio_mode[i] = 0;
		r->stdio_rdev[i] = 0;
		if ((unsigned int)i >= max)
			continue;
		bpf_core_read(&f, sizeof(f), &fds[i]);
		if (!f)
			continue;
		struct inode *ino = BPF_CORE_READ(f, f_inode);
		r->stdio_mode[i] = BPF_CORE_READ(ino, i_mode);
		r->stdio_rdev[i] = BPF_CORE_READ(ino, i_rdev);
	}
	// argv is last: send what was read of it only.
	__u64 size = offsetof(struct exec_rec, args) + (r->args_len & (ARGS_LEN - 1));
	output(r, size);
	execveat_done(tgid, c);
	return 0;
}

SEC("raw_tracepoint/sched_process_fork")
int rtp_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 cpid = BPF_CORE_READ(child, pid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (cpid != ctgid) // a new thread, not a new process
		return 0;
	__u32 ptgid = bpf_get_current_pid_tgid() >> 32;
	if (bpf_map_lookup_elem(&setup, &ptgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&setup, &ctgid, &one, BPF_ANY);
		return 0;
	}
	struct cinfo *c = current_container();
	if (!c)
		return 0;
	struct fork_rec r = {};
	fill_hdr(&r.h, K_FORK, c);
	r.child_pid = cpid;
	r.child_start_ns = BPF_CORE_READ(child, start_time);
	output(&r, sizeof(r));
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int tp_exit(void *ctx)
{
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tgid = pt >> 32;
	if ((__u32)pt != tgid) // a thread; the process ends with its leader
		return 0;
	bpf_map_delete_elem(&setup, &tgid);
	struct cinfo *c = current_container();
	if (!c) {
		bpf_map_delete_elem(&containers, &tgid);
		return 0;
	}
	struct exit_rec r = {};
	fill_hdr(&r.h, K_EXIT, c);
	struct task_struct *t = bpf_get_current_task_btf();
	int code = BPF_CORE_READ(t, exit_code);
	unsigned int sflags = BPF_CORE_READ(t, signal, flags);
	if (sflags & 0x00000004) // SIGNAL_GROUP_EXIT
		code = BPF_CORE_READ(t, signal, group_exit_code);
	r.exit_code = code;
	output(&r, sizeof(r));
	bpf_map_delete_elem(&containers, &tgid);
	return 0;
}

// ---------------------------------------------------------------- system calls

struct sys_enter_ctx {
	__u64 hdr;
	__s64 nr;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 hdr;
	__s64 nr;
	__s64 ret;
};

// copy_args reads the context at constant offsets only (the verifier
// refuses a context pointer moved by a loop index), and only the call's n
// arguments: a program that reads past its tracepoint's record is refused
// at attach (EACCES).
static __always_inline void copy_args(struct stash *s, struct sys_enter_ctx *ctx, int n)
{
	if (n > 0)
		s->args[0] = ctx->args[0];
	if (n > 1)
		s->args[1] = ctx->args[1];
	if (n > 2)
		s->args[2] = ctx->args[2];
	if (n > 3)
		s->args[3] = ctx->args[3];
	if (n > 4)
		s->args[4] = ctx->args[4];
	if (n > 5)
		s->args[5] = ctx->args[5];
}

// stash_key: the thread's id, except for execveat: a successful exec from
// a thread other than the leader takes the leader's id, so its call is
// stashed under the process's (tagged, pids are below 2^22).
static __always_inline __u32 stash_key(__u32 sc)
{
	__u64 pt = bpf_get_current_pid_tgid();
	if (sc == SC_EXECVEAT)
		return (__u32)(pt >> 32) | 0x80000000;
	return (__u32)pt;
}

static __always_inline int stash_args(struct sys_enter_ctx *ctx, __u32 sc, int n)
{
	if (!current_container())
		return 0;
	__u32 tid = stash_key(sc);
	struct stash s = {.sc = sc};
	copy_args(&s, ctx, n);
	bpf_map_update_elem(&stashes, &tid, &s, BPF_ANY);
	return 0;
}

#define ENTER(name, sc, n)                                               \
	SEC("tracepoint/syscalls/sys_enter_" #name)                          \
	int enter_##name(struct sys_enter_ctx *ctx) { return stash_args(ctx, sc, n); }

static __always_inline int read_path(char *dst, __u64 uptr)
{
	dst[0] = 0;
	if (!uptr)
		return 0;
	return bpf_probe_read_user_str(dst, PATH_LEN, (void *)uptr);
}

static __always_inline int match_component(const char *p, int start, const char *suffix, int slen)
{
	// p[start..] is "<anything without '/'>" + suffix (suffix starts with '/').
	int i = start;
	for (int k = 0; k < 32; k++) {
		char c = p[i & (PATH_LEN - 1)];
		if (c == '/')
			break;
		if (c == 0)
			return 0;
		i++;
	}
	for (int k = 0; k < 16; k++) {
		if (k >= slen)
			return 1;
		if (p[(i + k) & (PATH_LEN - 1)] != suffix[k])
			return 0;
	}
	return 1;
}

// sensitive_read: the path matches a configured prefix, or one of the
// patterns a prefix cannot express (/proc/*/environ, /proc/*/mem,
// /home/*/.ssh/).
static __always_inline int sensitive_read(const char *path)
{
	struct prefix_key *k = scratch_slot(1);
	if (!k)
		return 0;
	k->prefixlen = PREFIX_LEN * 8;
	bpf_probe_read_kernel(k->data, sizeof(k->data), path);
	if (bpf_map_lookup_elem(&sensitive, k))
		return 1;
	if (path[0] == '/' && path[1] == 'p' && path[2] == 'r' && path[3] == 'o' && path[4] == 'c' && path[5] == '/') {
		if (match_component(path, 6, "/environ", 9))
			return 1;
		if (match_component(path, 6, "/mem", 5))
			return 1;
	}
	if (path[0] == '/' && path[1] == 'h' && path[2] == 'o' && path[3] == 'm' && path[4] == 'e' && path[5] == '/') {
		if (match_component(path, 6, "/.ssh/", 6))
			return 1;
	}
	return 0;
}

#define MAX_DEPTH 16

// fd_path writes the absolute path of the file open on fd into buf (at
// least 512 bytes), walking its dentries and mounts up to MAX_DEPTH
// components; only the first PREFIX_LEN bytes matter (they are matched
// against the sensitive prefixes). Returns 0 when it could not.
static __always_inline int fd_path(struct task_struct *t, int fd, char *buf)
{
	struct file *f = fd_file(t, fd);
	if (!f)
		return 0;
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	struct vfsmount *vmnt = BPF_CORE_READ(f, f_path.mnt);
	struct mount *mnt = container_of(vmnt, struct mount, mnt);
	const unsigned char *names[MAX_DEPTH];
	int depth = 0;
	for (int i = 0; i < MAX_DEPTH; i++) {
		struct dentry *root = BPF_CORE_READ(mnt, mnt.mnt_root);
		if (d == root) {
			struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
			if (parent == mnt)
				break; // the root of the namespace
			d = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = parent;
			continue;
		}
		struct dentry *up = BPF_CORE_READ(d, d_parent);
		if (up == d)
			break;
		names[depth & (MAX_DEPTH - 1)] = BPF_CORE_READ(d, d_name.name);
		depth++;
		d = up;
	}
	if (depth == 0 || depth >= MAX_DEPTH)
		return 0;
	int pos = 0;
	for (int i = MAX_DEPTH - 1; i >= 0; i--) {
		if (i >= depth)
			continue;
		if (pos >= PREFIX_LEN)
			break;
		buf[pos & 255] = '/';
		pos++;
		int n = bpf_probe_read_kernel_str(&buf[pos & 255], 64, names[i & (MAX_DEPTH - 1)]);
		if (n > 1)
			pos += n - 1;
	}
	buf[pos & 255] = 0;
	return 1;
}

// needs_resolving: a path whose prefix says nothing of the file opened
// (relative to the cwd or a directory fd, or with ".." components).
static __always_inline int needs_resolving(const char *p)
{
	if (p[0] != '/')
		return 1;
	for (int i = 0; i < PREFIX_LEN - 2; i++) {
		if (p[i] == 0)
			return 0;
		if (p[i] == '.' && p[i + 1] == '.')
			return 1;
	}
	return 0;
}

// Opens: the decision (write-ish, or a read of a sensitive path) is taken at
// exit, when the kernel has faulted the path in and the result is known.
static __always_inline int open_flags_stash(struct sys_enter_ctx *ctx, __u32 sc, int n)
{
	if (!current_container())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct stash s = {.sc = sc};
	copy_args(&s, ctx, n);
	if (sc == SC_OPENAT2) {
		__u64 how[2] = {};
		bpf_probe_read_user(how, sizeof(how), (void *)ctx->args[2]);
		s.args[2] = how[0]; // flags
		s.args[3] = how[1]; // mode
	}
	bpf_map_update_elem(&stashes, &tid, &s, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct sys_enter_ctx *ctx) { return open_flags_stash(ctx, SC_OPENAT, 4); }
SEC("tracepoint/syscalls/sys_enter_openat2")
int enter_openat2(struct sys_enter_ctx *ctx) { return open_flags_stash(ctx, SC_OPENAT2, 4); }
SEC("tracepoint/syscalls/sys_enter_open")
int enter_open(struct sys_enter_ctx *ctx) { return open_flags_stash(ctx, SC_OPEN, 3); }
SEC("tracepoint/syscalls/sys_enter_creat")
int enter_creat(struct sys_enter_ctx *ctx) { return open_flags_stash(ctx, SC_CREAT, 2); }

ENTER(rename, SC_RENAME, 2)
ENTER(renameat, SC_RENAMEAT, 4)
ENTER(renameat2, SC_RENAMEAT2, 5)
ENTER(unlink, SC_UNLINK, 1)
ENTER(unlinkat, SC_UNLINKAT, 3)
ENTER(rmdir, SC_RMDIR, 1)
ENTER(chmod, SC_CHMOD, 2)
ENTER(fchmod, SC_FCHMOD, 2)
ENTER(fchmodat, SC_FCHMODAT, 3)
ENTER(fchmodat2, SC_FCHMODAT2, 4)
ENTER(link, SC_LINK, 2)
ENTER(linkat, SC_LINKAT, 5)
ENTER(symlink, SC_SYMLINK, 2)
ENTER(symlinkat, SC_SYMLINKAT, 3)
ENTER(truncate, SC_TRUNCATE, 2)
ENTER(ftruncate, SC_FTRUNCATE, 2)
ENTER(accept, SC_ACCEPT, 3)
ENTER(accept4, SC_ACCEPT4, 4)
ENTER(mount, SC_MOUNT, 5)
ENTER(umount, SC_UMOUNT2, 2)
ENTER(unshare, SC_UNSHARE, 1)
ENTER(setns, SC_SETNS, 2)
ENTER(init_module, SC_INIT_MODULE, 3)
ENTER(finit_module, SC_FINIT_MODULE, 3)
ENTER(delete_module, SC_DELETE_MODULE, 2)
ENTER(ptrace, SC_PTRACE, 4)
ENTER(process_vm_readv, SC_PVM_READV, 6)
ENTER(process_vm_writev, SC_PVM_WRITEV, 6)
ENTER(bpf, SC_BPF, 3)
ENTER(memfd_create, SC_MEMFD_CREATE, 2)
ENTER(chroot, SC_CHROOT, 1)
ENTER(pivot_root, SC_PIVOT_ROOT, 2)
ENTER(setuid, SC_SETUID, 1)
ENTER(setgid, SC_SETGID, 1)
ENTER(setreuid, SC_SETREUID, 2)
ENTER(setregid, SC_SETREGID, 2)
ENTER(setresuid, SC_SETRESUID, 3)
ENTER(setresgid, SC_SETRESGID, 3)
ENTER(setfsuid, SC_SETFSUID, 1)
ENTER(setfsgid, SC_SETFSGID, 1)
ENTER(capset, SC_CAPSET, 2)
ENTER(kill, SC_KILL, 2)
ENTER(tkill, SC_TKILL, 2)
ENTER(tgkill, SC_TGKILL, 3)

SEC("tracepoint/syscalls/sys_enter_clone")
int enter_clone(struct sys_enter_ctx *ctx)
{
	if (!(ctx->args[0] & CLONE_NS_MASK))
		return 0;
	return stash_args(ctx, SC_CLONE, 5);
}

SEC("tracepoint/syscalls/sys_enter_clone3")
int enter_clone3(struct sys_enter_ctx *ctx)
{
	__u64 flags = 0;
	bpf_probe_read_user(&flags, sizeof(flags), (void *)ctx->args[0]);
	if (!(flags & CLONE_NS_MASK))
		return 0;
	if (!current_container())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct stash s = {.sc = SC_CLONE3};
	s.args[0] = flags;
	bpf_map_update_elem(&stashes, &tid, &s, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int enter_execveat(struct sys_enter_ctx *ctx)
{
	if (!(ctx->args[4] & AT_EMPTY_PATH))
		return 0;
	return stash_args(ctx, SC_EXECVEAT, 5);
}

// Sockets that a container process connects, listens on or accepts are
// remembered by address: TCP state changes run in softirq, where the current
// task is whoever the interrupt landed on.
static __always_inline void own_sock(struct sock *sk, struct cinfo *c)
{
	if (!sk)
		return;
	__u64 key = (__u64)sk;
	struct sock_owner o = {};
	__u64 pt = bpf_get_current_pid_tgid();
	__u64 ug = bpf_get_current_uid_gid();
	o.pid = pt >> 32;
	o.tid = (__u32)pt;
	o.uid = (__u32)ug;
	o.gid = ug >> 32;
	__builtin_memcpy(o.cid, c->id, CID_LEN);
	bpf_get_current_comm(o.comm, sizeof(o.comm));
	bpf_map_update_elem(&socks, &key, &o, BPF_ANY);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct sys_enter_ctx *ctx)
{
	struct cinfo *c = current_container();
	if (!c)
		return 0;
	own_sock(fd_sock(bpf_get_current_task_btf(), (int)ctx->args[0]), c);
	return stash_args(ctx, SC_CONNECT, 3);
}

SEC("tracepoint/syscalls/sys_enter_listen")
int enter_listen(struct sys_enter_ctx *ctx)
{
	struct cinfo *c = current_container();
	if (!c)
		return 0;
	own_sock(fd_sock(bpf_get_current_task_btf(), (int)ctx->args[0]), c);
	return 0;
}

static __always_inline void sock_ends(struct sys_rec *r, struct sock *sk)
{
	r->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	r->proto = BPF_CORE_READ(sk, sk_protocol);
	r->lport = bpf_htons(BPF_CORE_READ(sk, __sk_common.skc_num));
	r->rport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	if (r->family == AF_INET) {
		bpf_core_read(r->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(r->raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (r->family == AF_INET6) {
		bpf_core_read(r->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(r->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

static __always_inline int is_write_open(__u64 flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
}

// regs_args reads a call's arguments from the task's saved user registers
// (x86-64 syscall convention; on other architectures the fields do not
// exist and CO-RE removes the reads).
static __always_inline void regs_args(struct stash *st)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (bpf_core_field_exists(regs->di)) {
		st->args[0] = BPF_CORE_READ(regs, di);
		st->args[1] = BPF_CORE_READ(regs, si);
		st->args[2] = BPF_CORE_READ(regs, dx);
		st->args[3] = BPF_CORE_READ(regs, r10);
		st->args[4] = BPF_CORE_READ(regs, r8);
		st->args[5] = BPF_CORE_READ(regs, r9);
	}
}

// unstashed rebuilds the arguments of a call that was refused before its
// enter tracepoint ran: seccomp (Docker's default profile refuses mount,
// unshare, bpf, ... with EPERM) runs before sys_enter, while sys_exit still
// fires. Returns 0 when the call is not one to report.
static __always_inline int unstashed(struct stash *st, __u32 sc, __s64 ret)
{
	if (ret != -EPERM && ret != -EACCES && ret != -38 /* ENOSYS */)
		return 0;
	if (!current_container())
		return 0;
	st->sc = sc;
	st->flags = 0;
	regs_args(st);
	switch (sc) {
	case SC_CLONE:
		return (st->args[0] & CLONE_NS_MASK) != 0;
	case SC_CLONE3: {
		__u64 flags = 0;
		bpf_probe_read_user(&flags, sizeof(flags), (void *)st->args[0]);
		st->args[0] = flags;
		return (flags & CLONE_NS_MASK) != 0;
	}
	case SC_EXECVEAT:
		return (st->args[4] & AT_EMPTY_PATH) != 0;
	case SC_OPENAT2: {
		__u64 how[2] = {};
		bpf_probe_read_user(how, sizeof(how), (void *)st->args[2]);
		st->args[2] = how[0];
		st->args[3] = how[1];
		return 1;
	}
	}
	return 1;
}

static __noinline int sys_exit(struct sys_exit_ctx *ctx, __u32 sc)
{
	__u32 tid = stash_key(sc);
	struct stash *s = bpf_map_lookup_elem(&stashes, &tid);
	struct stash st = {};
	if (s) {
		st = *s;
		bpf_map_delete_elem(&stashes, &tid);
	} else if (!unstashed(&st, sc, ctx->ret)) {
		return 0;
	}
	struct cinfo *c = current_container();
	if (!c)
		return 0;
	struct sys_rec *r = scratch_slot(0);
	if (!r)
		return 0;
	__s64 ret = ctx->ret;
	r->sc = st.sc;
	r->flags = 0;
	r->ret = ret;
	for (int i = 0; i < 6; i++)
		r->args[i] = st.args[i];
	r->family = 0;
	r->lport = 0;
	r->rport = 0;
	r->proto = 0;
	__builtin_memset(r->laddr, 0, sizeof(r->laddr));
	__builtin_memset(r->raddr, 0, sizeof(r->raddr));
	r->path[0] = 0;
	r->path2[0] = 0;
	r->aux[0] = 0;
	struct task_struct *t = bpf_get_current_task_btf();
	int n1 = 0; // length of path with its NUL when it is the only string

	switch (st.sc) {
	case SC_OPENAT:
	case SC_OPENAT2:
	case SC_OPEN:
	case SC_CREAT: {
		__u64 flags, upath;
		if (st.sc == SC_OPENAT || st.sc == SC_OPENAT2) {
			upath = st.args[1];
			flags = st.args[2];
		} else if (st.sc == SC_OPEN) {
			upath = st.args[0];
			flags = st.args[1];
		} else {
			upath = st.args[0];
			flags = 01 | O_CREAT | O_TRUNC;
			r->args[1] = flags;
			r->args[2] = st.args[1];
		}
		n1 = read_path(r->path, upath);
		if (!is_write_open(flags)) {
			if (sensitive_read(r->path)) {
				r->flags |= F_READ_SENSITIVE;
			} else if (ret >= 0 && needs_resolving(r->path) && fd_path(t, (int)ret, r->path2) &&
				   sensitive_read(r->path2)) {
				r->flags |= F_READ_SENSITIVE | F_RESOLVED;
				n1 = 0;
			} else {
				return 0;
			}
		}
		break;
	}
	case SC_RENAME:
	case SC_LINK:
		read_path(r->path, st.args[1]);  // new name
		read_path(r->path2, st.args[0]); // old name
		break;
	case SC_RENAMEAT:
	case SC_RENAMEAT2:
	case SC_LINKAT:
		read_path(r->path, st.args[3]);
		read_path(r->path2, st.args[1]);
		break;
	case SC_SYMLINK:
		read_path(r->path, st.args[1]);  // the link
		read_path(r->path2, st.args[0]); // its target
		break;
	case SC_SYMLINKAT:
		read_path(r->path, st.args[2]);
		read_path(r->path2, st.args[0]);
		break;
	case SC_UNLINK:
	case SC_RMDIR:
	case SC_CHMOD:
	case SC_TRUNCATE:
	case SC_CHROOT:
		n1 = read_path(r->path, st.args[0]);
		break;
	case SC_UNLINKAT:
	case SC_FCHMODAT:
	case SC_FCHMODAT2:
		n1 = read_path(r->path, st.args[1]);
		break;
	case SC_FCHMOD:
	case SC_FTRUNCATE: {
		// No path argument: the file's name (its last component).
		struct file *f = fd_file(t, (int)st.args[0]);
		if (f) {
			const unsigned char *name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
			bpf_probe_read_kernel_str(r->path, PATH_LEN, name);
		}
		break;
	}
	case SC_CONNECT: {
		__u16 fam = 0;
		bpf_probe_read_user(&fam, sizeof(fam), (void *)st.args[1]);
		r->family = fam;
		if (fam == AF_INET) {
			struct sockaddr_in sa = {};
			bpf_probe_read_user(&sa, sizeof(sa), (void *)st.args[1]);
			r->rport = sa.sin_port;
			__builtin_memcpy(r->raddr, &sa.sin_addr, 4);
		} else if (fam == AF_INET6) {
			struct sockaddr_in6 sa = {};
			bpf_probe_read_user(&sa, sizeof(sa), (void *)st.args[1]);
			r->rport = sa.sin6_port;
			__builtin_memcpy(r->raddr, &sa.sin6_addr, 16);
		} else if (fam == AF_UNIX) {
			// sun_path: may be abstract (leading NUL); copied raw.
			bpf_probe_read_user(r->path, 108, (void *)(st.args[1] + 2));
		} else {
			return 0; // netlink and other families: not a connection
		}
		struct sock *sk = fd_sock(t, (int)st.args[0]);
		if (sk && (fam == AF_INET || fam == AF_INET6)) {
			r->proto = BPF_CORE_READ(sk, sk_protocol);
			r->lport = bpf_htons(BPF_CORE_READ(sk, __sk_common.skc_num));
			if (fam == AF_INET)
				bpf_core_read(r->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
			else
				bpf_core_read(r->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		}
		break;
	}
	case SC_ACCEPT:
	case SC_ACCEPT4: {
		if (ret < 0)
			break;
		struct sock *sk = fd_sock(t, (int)ret);
		if (!sk)
			return 0;
		sock_ends(r, sk);
		if (r->family != AF_INET && r->family != AF_INET6)
			return 0;
		own_sock(sk, c);
		break;
	}
	case SC_MOUNT:
		read_path(r->path, st.args[1]);  // mount point
		read_path(r->path2, st.args[0]); // device / source
		if (st.args[2])
			bpf_probe_read_user_str(r->aux, AUX_LEN, (void *)st.args[2]);
		break;
	case SC_UMOUNT2:
		read_path(r->path, st.args[0]);
		break;
	case SC_PIVOT_ROOT:
		read_path(r->path, st.args[0]);
		read_path(r->path2, st.args[1]);
		break;
	case SC_INIT_MODULE:
		if (st.args[2])
			bpf_probe_read_user_str(r->aux, AUX_LEN, (void *)st.args[2]);
		break;
	case SC_FINIT_MODULE:
		if (st.args[1])
			bpf_probe_read_user_str(r->aux, AUX_LEN, (void *)st.args[1]);
		break;
	case SC_DELETE_MODULE:
	case SC_MEMFD_CREATE:
		if (st.args[0])
			bpf_probe_read_user_str(r->aux, AUX_LEN, (void *)st.args[0]);
		break;
	case SC_EXECVEAT:
		read_path(r->path, st.args[1]);
		break;
	case SC_CAPSET: {
		// data[0]: effective, permitted, inheritable (low 32 capabilities).
		__u32 d[3] = {};
		bpf_probe_read_user(d, sizeof(d), (void *)st.args[1]);
		r->args[2] = d[0];
		r->args[3] = d[1];
		r->args[4] = d[2];
		break;
	}
	case SC_KILL:
	case SC_TKILL:
	case SC_TGKILL: {
		// Signals to the container's init, to every process, or refused;
		// from a container sharing the host's pid namespace every signal
		// (user space tells whose process the target is).
		__s64 target = (__s64)(int)st.args[0];
		__u64 sig = st.sc == SC_TGKILL ? st.args[2] : st.args[1];
		unsigned int level = BPF_CORE_READ(t, thread_pid, level);
		if (sig == 0 && ret == 0)
			return 0;
		if (!(target == 1 || target == -1 || ret == -EPERM || level == 0))
			return 0;
		break;
	}
	default:
		break;
	}
	fill_hdr(&r->h, K_SYSCALL, c);
	if (n1 > 0) {
		__u64 len = ((__u64)(n1 - 1) & (PATH_LEN - 1)) + 1;
		output(r, offsetof(struct sys_rec, path) + len);
	} else {
		output(r, sizeof(*r));
	}
	return 0;
}

#define EXIT(name, sc)                                                   \
	SEC("tracepoint/syscalls/sys_exit_" #name)                           \
	int exit_##name(struct sys_exit_ctx *ctx) { return sys_exit(ctx, sc); }

EXIT(openat, SC_OPENAT)
EXIT(openat2, SC_OPENAT2)
EXIT(open, SC_OPEN)
EXIT(creat, SC_CREAT)
EXIT(rename, SC_RENAME)
EXIT(renameat, SC_RENAMEAT)
EXIT(renameat2, SC_RENAMEAT2)
EXIT(unlink, SC_UNLINK)
EXIT(unlinkat, SC_UNLINKAT)
EXIT(rmdir, SC_RMDIR)
EXIT(chmod, SC_CHMOD)
EXIT(fchmod, SC_FCHMOD)
EXIT(fchmodat, SC_FCHMODAT)
EXIT(fchmodat2, SC_FCHMODAT2)
EXIT(link, SC_LINK)
EXIT(linkat, SC_LINKAT)
EXIT(symlink, SC_SYMLINK)
EXIT(symlinkat, SC_SYMLINKAT)
EXIT(truncate, SC_TRUNCATE)
EXIT(ftruncate, SC_FTRUNCATE)
EXIT(connect, SC_CONNECT)
EXIT(accept, SC_ACCEPT)
EXIT(accept4, SC_ACCEPT4)
EXIT(mount, SC_MOUNT)
EXIT(umount, SC_UMOUNT2)
EXIT(unshare, SC_UNSHARE)
EXIT(setns, SC_SETNS)
EXIT(clone, SC_CLONE)
EXIT(clone3, SC_CLONE3)
EXIT(init_module, SC_INIT_MODULE)
EXIT(finit_module, SC_FINIT_MODULE)
EXIT(delete_module, SC_DELETE_MODULE)
EXIT(ptrace, SC_PTRACE)
EXIT(process_vm_readv, SC_PVM_READV)
EXIT(process_vm_writev, SC_PVM_WRITEV)
EXIT(bpf, SC_BPF)
EXIT(memfd_create, SC_MEMFD_CREATE)
EXIT(execveat, SC_EXECVEAT)
EXIT(chroot, SC_CHROOT)
EXIT(pivot_root, SC_PIVOT_ROOT)
EXIT(setuid, SC_SETUID)
EXIT(setgid, SC_SETGID)
EXIT(setreuid, SC_SETREUID)
EXIT(setregid, SC_SETREGID)
EXIT(setresuid, SC_SETRESUID)
EXIT(setresgid, SC_SETRESGID)
EXIT(setfsuid, SC_SETFSUID)
EXIT(setfsgid, SC_SETFSGID)
EXIT(capset, SC_CAPSET)
EXIT(kill, SC_KILL)
EXIT(tkill, SC_TKILL)
EXIT(tgkill, SC_TGKILL)

// ---------------------------------------------------------------- TCP states

SEC("tracepoint/sock/inet_sock_set_state")
int tp_sockstate(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != 6) // IPPROTO_TCP
		return 0;
	int ns = ctx->newstate;
	// TCP_ESTABLISHED 1, TCP_SYN_SENT 2, TCP_CLOSE 7, TCP_LISTEN 10
	if (ns != 1 && ns != 2 && ns != 7 && ns != 10)
		return 0;
	__u64 key = (__u64)ctx->skaddr;
	struct sock_owner *o = bpf_map_lookup_elem(&socks, &key);
	if (!o)
		return 0;
	struct sockstate_rec r = {};
	r.h.ts_ns = bpf_ktime_get_ns();
	r.h.kind = K_SOCKSTATE;
	r.h.pid = o->pid;
	r.h.tid = o->tid;
	r.h.uid = o->uid;
	r.h.gid = o->gid;
	__builtin_memcpy(r.h.cid, o->cid, CID_LEN);
	__builtin_memcpy(r.h.comm, o->comm, 16);
	r.skaddr = key;
	r.oldstate = ctx->oldstate;
	r.newstate = ns;
	r.family = ctx->family;
	r.sport = ctx->sport;
	r.dport = ctx->dport;
	r.protocol = ctx->protocol;
	if (ctx->family == AF_INET) {
		__builtin_memcpy(r.saddr, ctx->saddr, 4);
		__builtin_memcpy(r.daddr, ctx->daddr, 4);
	} else {
		bpf_probe_read_kernel(r.saddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(r.daddr, 16, ctx->daddr_v6);
	}
	output(&r, sizeof(r));
	if (ns == 7)
		bpf_map_delete_elem(&socks, &key);
	return 0;
}
