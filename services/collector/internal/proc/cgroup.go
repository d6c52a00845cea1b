package proc

import "bytes"

// ContainerID returns the container a process belongs to, from the contents
// of /proc/<pid>/cgroup, or "" for a process outside any container.
//
// A container is a cgroup path component that holds a 64-hex id: the
// cgroupfs driver's "/docker/<id>" (v1 and v2), the systemd driver's
// "/system.slice/docker-<id>.scope", and the same shapes of other runtimes
// ("cri-containerd-<id>.scope", "crio-<id>.scope", "libpod-<id>.scope",
// Kubernetes' ".../pod<uid>/<id>"). When ids nest (a container's own
// sub-cgroups, Docker in Docker) the outermost wins: it is the container the
// host's engine knows. The path is the one seen from the reader's cgroup
// namespace, so the collector must run in the host's.
func ContainerID(cgroupFile []byte) string {
	for len(cgroupFile) > 0 {
		line := cgroupFile
		if i := bytes.IndexByte(cgroupFile, '\n'); i >= 0 {
			line, cgroupFile = cgroupFile[:i], cgroupFile[i+1:]
		} else {
			cgroupFile = nil
		}
		// hierarchy-ID:controller-list:cgroup-path; the path may hold ':'.
		_, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		_, path, ok := bytes.Cut(rest, []byte(":"))
		if !ok {
			continue
		}
		if id := pathContainerID(path); id != "" {
			return id
		}
	}
	return ""
}

// pathContainerID is the outermost container id in one cgroup path.
func pathContainerID(path []byte) string {
	for len(path) > 0 {
		comp := path
		if i := bytes.IndexByte(path, '/'); i >= 0 {
			comp, path = path[:i], path[i+1:]
		} else {
			path = nil
		}
		comp = bytes.TrimSuffix(comp, []byte(".scope"))
		if i := bytes.LastIndexByte(comp, '-'); i >= 0 {
			comp = comp[i+1:]
		}
		if isContainerID(comp) {
			return string(comp)
		}
	}
	return ""
}

func isContainerID(b []byte) bool {
	if len(b) != 64 {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
