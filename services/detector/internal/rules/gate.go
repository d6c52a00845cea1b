package rules

import (
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/parser"
)

// toolGate returns the process.tool values a condition can match at all,
// when one of its top-level conjuncts is a test of process.tool alone
// (`is_exec && process.tool in list && ...`, `(process.tool == "x" ||
// process.tool in list) && ...`), and nil otherwise. A conjunction is false
// when any operand is, and conditions have no side effects, so skipping the
// rule for any other tool gives the same result without running the VM: a
// process event then costs only the rules of its tool, however many tool
// rules there are. (A rule that would have failed at run time before its
// tool test is skipped rather than counted as an error.)
func (c *compiler) toolGate(src string) map[string]struct{} {
	tree, err := parser.Parse(src)
	if err != nil {
		return nil
	}
	x := &expander{c: c}
	ast.Walk(&tree.Node, x)
	if x.err != nil {
		return nil
	}
	for _, n := range conjuncts(tree.Node, nil) {
		if set, ok := toolSet(n); ok {
			return set
		}
	}
	return nil
}

// conjuncts flattens the top-level && chain of n.
func conjuncts(n ast.Node, out []ast.Node) []ast.Node {
	if b, ok := n.(*ast.BinaryNode); ok && (b.Operator == "&&" || b.Operator == "and") {
		return conjuncts(b.Right, conjuncts(b.Left, out))
	}
	return append(out, n)
}

// toolSet returns the values n requires process.tool to be in, if n is a
// test of process.tool against constants (or an || of such tests).
func toolSet(n ast.Node) (map[string]struct{}, bool) {
	b, ok := n.(*ast.BinaryNode)
	if !ok {
		return nil, false
	}
	switch b.Operator {
	case "||", "or":
		l, ok := toolSet(b.Left)
		if !ok {
			return nil, false
		}
		r, ok := toolSet(b.Right)
		if !ok {
			return nil, false
		}
		u := make(map[string]struct{}, len(l)+len(r))
		for k := range l {
			u[k] = struct{}{}
		}
		for k := range r {
			u[k] = struct{}{}
		}
		return u, true
	case "==":
		if s, ok := b.Right.(*ast.StringNode); ok && isProcessTool(b.Left) {
			return map[string]struct{}{s.Value: {}}, true
		}
	case "in":
		if !isProcessTool(b.Left) {
			return nil, false
		}
		switch r := b.Right.(type) {
		case *ast.ConstantNode:
			switch v := r.Value.(type) {
			case map[string]struct{}:
				return v, true
			case []string:
				m := make(map[string]struct{}, len(v))
				for _, s := range v {
					m[s] = struct{}{}
				}
				return m, true
			}
		case *ast.ArrayNode:
			m := make(map[string]struct{}, len(r.Nodes))
			for _, e := range r.Nodes {
				s, ok := e.(*ast.StringNode)
				if !ok {
					return nil, false
				}
				m[s.Value] = struct{}{}
			}
			return m, true
		}
	}
	return nil, false
}

func isProcessTool(n ast.Node) bool {
	m, ok := n.(*ast.MemberNode)
	if !ok || m.Optional {
		return false
	}
	id, ok := m.Node.(*ast.IdentifierNode)
	p, ok2 := m.Property.(*ast.StringNode)
	return ok && ok2 && id.Value == "process" && p.Value == "tool"
}
