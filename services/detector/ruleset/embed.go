// Package ruleset holds whalewatch's shipped detection rules (*.yaml), embedded
// into the detector binary. The rule engine is internal/rules; the schema and
// the list of shipped rules are in the detector's README.
package ruleset

import "embed"

// FS holds the shipped rule files at its root, applied in name order.
//
//go:embed *.yaml
var FS embed.FS
