//! What a rule's `when` provably requires of an event (PURE), found once at compile time, so
//! that evaluation can skip rules that cannot fire without running them, with identical results.
//!
//! Only the leading conditions of a `when` whose body is one expression are used, and only of
//! the form `ev.field == "literal"` or an `||` of such on one field: these cannot fail and are
//! evaluated first, so when one is false `when` is false without running anything else (no
//! error, no counter hit) — exactly what skipping the rule gives.

use rhai::{AST, ASTNode, Dynamic, Expr, Stmt};

/// `field` must be a string equal to one of `allowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requirement {
    pub(crate) field: String,
    pub(crate) allowed: Vec<String>,
}

impl Requirement {
    /// Whether the event (its Rhai map) meets the requirement.
    pub(crate) fn holds(&self, ev: &rhai::Map) -> bool {
        ev.get(self.field.as_str())
            .and_then(Dynamic::read_lock::<rhai::ImmutableString>)
            .is_some_and(|value| self.allowed.iter().any(|a| a.as_str() == value.as_str()))
    }
}

/// The requirements of the rule's `when(param)`, all of which must hold for it to fire.
pub(crate) fn requirements(ast: &AST, param: &str) -> Vec<Requirement> {
    let mut when = ast.clone_functions_only();
    when.retain_functions(|_, _, name, params| name == "when" && params == 1);
    let mut top: Vec<Option<Expr>> = Vec::new();
    when.walk(&mut |path: &[ASTNode]| {
        if path.len() == 1 {
            top.push(match path[0] {
                ASTNode::Stmt(Stmt::Expr(expr)) => Some((**expr).clone()),
                // A call standing alone (`a == b` is a call to `==`) is a statement of its own.
                ASTNode::Stmt(Stmt::FnCall(call, pos)) => Some(Expr::FnCall(call.clone(), *pos)),
                ASTNode::Expr(expr) => Some(expr.clone()),
                _ => None,
            });
        }
        true
    });
    match top.as_slice() {
        [Some(expr)] => leading(expr, param),
        _ => Vec::new(),
    }
}

fn leading(expr: &Expr, param: &str) -> Vec<Requirement> {
    match expr {
        Expr::And(items, _) => items
            .iter()
            .map_while(|item| condition(item, param))
            .collect(),
        other => condition(other, param).into_iter().collect(),
    }
}

fn condition(expr: &Expr, param: &str) -> Option<Requirement> {
    match expr {
        Expr::FnCall(call, _)
            if call.name.as_str() == "==" && call.op_token.is_some() && call.args.len() == 2 =>
        {
            let (a, b) = (&call.args[0], &call.args[1]);
            field_equals(a, b, param).or_else(|| field_equals(b, a, param))
        }
        Expr::Or(items, _) => {
            let mut merged: Option<Requirement> = None;
            for item in items.iter() {
                let req = condition(item, param)?;
                match &mut merged {
                    None => merged = Some(req),
                    Some(m) if m.field == req.field => m.allowed.extend(req.allowed),
                    Some(_) => return None,
                }
            }
            merged
        }
        Expr::Stmt(block) => match block.statements() {
            [Stmt::Expr(inner)] => condition(inner, param),
            _ => None,
        },
        _ => None,
    }
}

/// `param.field == "literal"`.
fn field_equals(lhs: &Expr, rhs: &Expr, param: &str) -> Option<Requirement> {
    let Expr::StringConstant(literal, _) = rhs else {
        return None;
    };
    let Expr::Dot(chain, _, _) = lhs else {
        return None;
    };
    let (Expr::Variable(var, _, _), Expr::Property(prop, _)) = (&chain.lhs, &chain.rhs) else {
        return None;
    };
    (var.1.as_str() == param).then(|| Requirement {
        field: prop.2.to_string(),
        allowed: vec![literal.to_string()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(when: &str) -> Vec<Requirement> {
        let engine = rhai::Engine::new();
        let ast = engine
            .compile(format!("fn when(ev) {{ {when} }} fn then(ev) {{ [] }}"))
            .unwrap();
        requirements(&ast, "ev")
    }

    fn req(field: &str, allowed: &[&str]) -> Requirement {
        Requirement {
            field: field.into(),
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn finds_leading_equalities_only() {
        assert_eq!(reqs(r#"ev.outcome == "busy""#), [req("outcome", &["busy"])]);
        assert_eq!(
            reqs(r#""busy" == ev.outcome && ev.queue_time > 1"#),
            [req("outcome", &["busy"])]
        );
        assert_eq!(
            reqs(
                r#"(ev.outcome == "a" || ev.outcome == "b") && ev.workflow == "in" && ev.x > 1 && ev.y == "z""#
            ),
            [req("outcome", &["a", "b"]), req("workflow", &["in"])]
        );
        // Not provable: something runs before it, or it is not an equality with a literal.
        assert_eq!(reqs(r#"ev.x.len() > 0 && ev.outcome == "a""#), []);
        assert_eq!(reqs(r#"ev.outcome == "a" || ev.workflow == "in""#), []);
        assert_eq!(reqs(r#"let o = "a"; ev.outcome == o"#), []);
        assert_eq!(reqs(r#"ev.outcome != "a""#), []);
        assert_eq!(reqs(r#"other.outcome == "a""#), []);
    }
}
