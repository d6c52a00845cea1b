package sensor

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// DefaultSensitivePaths are the path prefixes whose opens for reading are
// reported: credentials, keys, secrets mounted by orchestrators, cloud and
// registry credentials. /proc/<pid>/environ, /proc/<pid>/mem and
// /home/<user>/.ssh/ are matched by the kernel program itself (a prefix
// cannot express them).
var DefaultSensitivePaths = []string{
	"/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh/ssh_host_",
	"/root/.ssh/", "/root/.aws/", "/root/.docker/config.json", "/root/.kube/",
	"/root/.bash_history", "/root/.config/gcloud/", "/root/.azure/",
	"/var/run/secrets/", "/run/secrets/", "/etc/kubernetes/",
}

// maxPrefix is the kernel's prefix key size (PREFIX_LEN in sensor.bpf.c).
const maxPrefix = 128

// maxPrefixes is the kernel's prefix map size.
const maxPrefixes = 256

// Config is the sensor's configuration (flags with the prefix "sensor-",
// env SENSOR_*).
type Config struct {
	RingBufferBytes int           // -sensor-ring-buffer-bytes, power of two, default 8 MiB
	SensitivePaths  []string      // -sensor-sensitive-paths: path prefixes whose opens FOR READING are reported
	EnrichWait      time.Duration // -sensor-enrich-wait: how long an event waits for its container's metadata
}

// RegisterFlags registers the sensor's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.RingBufferBytes, "sensor-ring-buffer-bytes", 8<<20, "kernel sensor: size of the ring buffer shared by the kernel programs and the collector, a power of two (records lost when it is full are counted)")
	c.SensitivePaths = append([]string(nil), DefaultSensitivePaths...)
	fs.Func("sensor-sensitive-paths", "kernel sensor: comma-separated path prefixes whose opens for reading are reported (default: "+strings.Join(DefaultSensitivePaths, ",")+")", func(s string) error {
		c.SensitivePaths = splitList(s)
		return nil
	})
	fs.DurationVar(&c.EnrichWait, "sensor-enrich-wait", 2*time.Second, "kernel sensor: how long an event of a container not known yet waits for its metadata before it is published with the id alone")
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if c.RingBufferBytes < 4096 || c.RingBufferBytes&(c.RingBufferBytes-1) != 0 {
		errs = append(errs, fmt.Errorf("sensor-ring-buffer-bytes %d: must be a power of two of at least 4096", c.RingBufferBytes))
	}
	if len(c.SensitivePaths) > maxPrefixes {
		errs = append(errs, fmt.Errorf("sensor-sensitive-paths: %d prefixes, at most %d", len(c.SensitivePaths), maxPrefixes))
	}
	for _, p := range c.SensitivePaths {
		if !strings.HasPrefix(p, "/") || len(p) >= maxPrefix || strings.ContainsRune(p, 0) {
			errs = append(errs, fmt.Errorf("sensor-sensitive-paths %q: must be an absolute path shorter than %d bytes", p, maxPrefix))
		}
	}
	if c.EnrichWait < 0 || c.EnrichWait > time.Minute {
		errs = append(errs, fmt.Errorf("sensor-enrich-wait %s: must be between 0 and 1m", c.EnrichWait))
	}
	return errors.Join(errs...)
}
