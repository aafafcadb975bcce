//! Expression attribute names and values, bound from the expressions of a request: a
//! placeholder is bound because an expression uses it, and only then (DynamoDB refuses a bound
//! placeholder that no expression uses, and fails a used one that is not bound).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use twochan_domain::{DomainError, Result};

/// The placeholders of a request's expressions, bound; `None` where there are none (DynamoDB
/// refuses an empty map).
#[derive(Debug, Default)]
pub(super) struct Bound {
    pub names: Option<HashMap<String, String>>,
    pub values: Option<HashMap<String, AttributeValue>>,
}

/// Binds every placeholder `expressions` use: a `#name` stands for the attribute `name` (a
/// reserved word such as `status` can only be named so), a `:value` gets the value given for it.
/// A used value that was not given, or a value given that nothing uses, is a bug of the caller.
pub(super) fn bind(
    expressions: &[&str],
    values: Vec<(&'static str, AttributeValue)>,
) -> Result<Bound> {
    let mut names = HashMap::new();
    let mut used = Vec::new();
    for expr in expressions {
        for name in placeholders(expr, '#') {
            names.insert(name.to_owned(), name[1..].to_owned());
        }
        used.extend(placeholders(expr, ':'));
    }
    let mut bound = HashMap::with_capacity(values.len());
    for (placeholder, value) in values {
        if !used.contains(&placeholder) {
            return Err(bug(format!(
                "{placeholder} is given but no expression uses it"
            )));
        }
        if bound.insert(placeholder.to_owned(), value).is_some() {
            return Err(bug(format!("{placeholder} is given twice")));
        }
    }
    if let Some(missing) = used.iter().find(|p| !bound.contains_key(**p)) {
        return Err(bug(format!("{missing} is used but not given")));
    }
    Ok(Bound {
        names: (!names.is_empty()).then_some(names),
        values: (!bound.is_empty()).then_some(bound),
    })
}

fn bug(what: String) -> DomainError {
    DomainError::Internal(format!("dynamodb expression: {what}"))
}

/// The placeholders that start with `sigil` in `expr`. Expressions have no string literals (every
/// literal is a `:value`), so a `#` or `:` can only start one.
fn placeholders(expr: &str, sigil: char) -> impl Iterator<Item = &str> {
    expr.match_indices(sigil).map(move |(at, _)| {
        let rest = &expr[at + 1..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        &expr[at..at + 1 + len]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> AttributeValue {
        AttributeValue::S("x".into())
    }

    #[test]
    fn binds_what_the_expressions_use_and_nothing_else() {
        let b = bind(
            &[
                "SET #status = :to",
                "#status = :pending AND expires_at >= :now",
            ],
            vec![(":to", v()), (":pending", v()), (":now", v())],
        )
        .unwrap();
        assert_eq!(
            b.names,
            Some(HashMap::from([("#status".into(), "status".into())]))
        );
        assert_eq!(b.values.map(|v| v.len()), Some(3));
        // A name that merely starts like another is its own placeholder.
        let b = bind(&["attribute_exists(#status_at)"], vec![]).unwrap();
        assert_eq!(
            b.names,
            Some(HashMap::from([("#status_at".into(), "status_at".into())]))
        );
        let none = bind(&["attribute_not_exists(pk)", ""], vec![]).unwrap();
        assert!(none.names.is_none() && none.values.is_none());
    }

    #[test]
    fn a_placeholder_given_or_used_alone_is_refused() {
        assert!(bind(&["a = :a"], vec![]).is_err());
        assert!(bind(&["a = :a"], vec![(":a", v()), (":b", v())]).is_err());
        assert!(bind(&["a = :a"], vec![(":a", v()), (":a", v())]).is_err());
        // `:ab` is not `:a`.
        assert!(bind(&["x = :ab"], vec![(":a", v())]).is_err());
    }
}
