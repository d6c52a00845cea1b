// Package flagenv lets every flag of a service be set from the environment as
// well (12-factor): flag "nats-url" is also NATS_URL. A flag given on the
// command line wins over the environment. The same flag set renders the
// documentation table, so the docs cannot drift from the code.
package flagenv

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// EnvName is the environment variable of a flag: "nats-url" -> "NATS_URL".
func EnvName(flagName string) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(flagName))
}

// Parse parses args into fs, then sets every flag not given in args from its
// environment variable, looked up with getenv (os.Getenv when nil). An
// environment value that does not parse is an error naming the variable.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		name := EnvName(f.Name)
		if v := getenv(name); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s: %w", name, e)
			}
		}
	})
	return err
}

// WriteMarkdown writes the flags of fs as a Markdown table: variable, flag,
// default, description. Flags whose usage starts with "secret:" show no default.
func WriteMarkdown(w io.Writer, fs *flag.FlagSet) error {
	var b strings.Builder
	b.WriteString("| Environment variable | Flag | Default | Description |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if def != "" {
			def = "`" + def + "`"
		}
		usage := strings.ReplaceAll(f.Usage, "|", `\|`)
		fmt.Fprintf(&b, "| `%s` | `-%s` | %s | %s |\n", EnvName(f.Name), f.Name, def, usage)
	})
	_, err := io.WriteString(w, b.String())
	return err
}
