package natsauth

import (
	"flag"
	"io"
)

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("natsauth", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}
