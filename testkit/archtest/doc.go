// Package archtest checks the module boundaries the design depends on.
package archtest
