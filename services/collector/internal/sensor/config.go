package sensor

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// Config is the sensor's configuration (flags with the prefix "sensor-",
// env SENSOR_*; RegisterFlags/Validate like every Config in this project).
type Config struct {
	RingBufferBytes int           // -sensor-ring-buffer-bytes, power of two, default 8 MiB
	SensitivePaths  []string      // -sensor-sensitive-paths: path prefixes whose opens FOR READING are reported
	EnrichWait      time.Duration // -sensor-enrich-wait: how long an event waits for its container's metadata
}

// RegisterFlags registers the sensor's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.RingBufferBytes, "sensor-ring-buffer-bytes", 8<<20, "the kernel sensor's ring buffer size in bytes (a power of two)")
	c.SensitivePaths = []string{"/etc/shadow", "/etc/sudoers", "/root/.ssh/"}
	fs.Func("sensor-sensitive-paths", "comma-separated path prefixes whose opens for reading the kernel sensor reports (default /etc/shadow,/etc/sudoers,/root/.ssh/)", func(s string) error {
		c.SensitivePaths = nil
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.SensitivePaths = append(c.SensitivePaths, p)
			}
		}
		return nil
	})
	fs.DurationVar(&c.EnrichWait, "sensor-enrich-wait", 2*time.Second, "how long a kernel sensor event waits for its container's metadata before it is published with the container id alone")
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if n := c.RingBufferBytes; n < 4096 || n&(n-1) != 0 {
		errs = append(errs, fmt.Errorf("sensor-ring-buffer-bytes must be a power of two of at least 4096, not %d", n))
	}
	if c.EnrichWait < 0 {
		errs = append(errs, errors.New("sensor-enrich-wait must not be negative"))
	}
	return errors.Join(errs...)
}
