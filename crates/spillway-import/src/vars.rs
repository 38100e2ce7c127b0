//! Serverless Framework variables (`${self:provider.region}`,
//! `${opt:stage, 'dev'}`) resolved where the file alone can say what they
//! are; any other is left as written and reported.

use serde_json::Value;

use crate::report::Report;

/// Resolves the variables in every string of `doc`.
pub fn resolve(doc: &mut Value, report: &mut Report) {
    let root = doc.clone();
    walk(doc, &root, "", report);
}

fn walk(v: &mut Value, root: &Value, place: &str, report: &mut Report) {
    match v {
        Value::String(s) if s.contains("${") => {
            *v = string(s, root, place, report, 0);
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, root, &format!("{place}[{i}]"), report);
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                let p = if place.is_empty() { k.clone() } else { format!("{place}.{k}") };
                walk(item, root, &p, report);
            }
        }
        _ => {}
    }
}

/// One string: variables replaced innermost first; a string that is one
/// variable takes its value's type (`${self:custom.count}` → 5).
fn string(s: &str, root: &Value, place: &str, report: &mut Report, depth: usize) -> Value {
    let mut s = s.to_owned();
    for _ in 0..10 {
        // The innermost `${…}`: the last `${` before the first `}` after it.
        let Some(close) = s.find('}') else { break };
        let Some(open) = s[..close].rfind("${") else { break };
        let inner = s[open + 2..close].to_owned();
        // A value that holds variables itself is resolved first (a few
        // levels: a cycle stops there).
        let found = lookup(&inner, root).map(|v| match v {
            Value::String(t) if t.contains("${") && depth < 5 => string(&t, root, place, report, depth + 1),
            other => other,
        });
        match found.filter(|v| !v.as_str().is_some_and(|t| t.contains("${"))) {
            Some(value) => {
                if open == 0 && close == s.len() - 1 && !value.is_string() {
                    return value;
                }
                let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                s.replace_range(open..=close, &text);
            }
            None => {
                // CloudFormation's own `${AWS::Region}` (in `Fn::Sub`) is not
                // a Serverless variable: left for the CloudFormation reader.
                if inner.contains(':') && !inner.starts_with("AWS::") {
                    report.not_carried(
                        place,
                        format!("`${{{inner}}}` cannot be resolved from the file alone: left as written"),
                    );
                }
                break;
            }
        }
    }
    Value::String(s)
}

/// A variable's value: `self:`, `opt:`/`sls:` stage and region, `env:`
/// with a default, `aws:region`; `, 'default'` taken when nothing else is.
fn lookup(inner: &str, root: &Value) -> Option<Value> {
    let (var, default) = match inner.split_once(',') {
        Some((v, d)) => (v.trim(), Some(d.trim().trim_matches(['\'', '"']).to_owned())),
        None => (inner.trim(), None),
    };
    let provider =
        |k: &str| root.pointer(&format!("/provider/{k}")).and_then(Value::as_str).map(str::to_owned);
    let found = if let Some(path) = var.strip_prefix("self:") {
        let pointer = format!("/{}", path.replace('.', "/"));
        root.pointer(&pointer).cloned()
    } else {
        match var {
            // No command-line options here: `opt:` takes its default.
            "sls:stage" => provider("stage").map(Value::from),
            "aws:region" => provider("region").map(Value::from),
            _ => None,
        }
    };
    found.or_else(|| default.map(Value::from)).or_else(|| match var {
        // Serverless's own defaults.
        "opt:stage" | "sls:stage" => Some(Value::from("dev")),
        "opt:region" | "aws:region" => Some(Value::from("us-east-1")),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::report::Report;

    #[test]
    fn self_opt_and_defaults_resolve_and_others_are_reported() {
        let mut doc = json!({
            "provider": {"stage": "${opt:stage, 'prod'}", "region": "eu-west-1"},
            "custom": {"queue": "orders-${self:provider.stage}", "n": 5},
            "a": "${self:custom.queue}",
            "b": "${self:custom.n}",
            "c": "${env:SECRET}",
            "d": "${aws:region}",
        });
        let mut report = Report::default();
        super::resolve(&mut doc, &mut report);
        // One pass over a copy: `a` sees `custom.queue` as written, resolved
        // on the way (innermost first).
        assert_eq!(doc["custom"]["queue"], "orders-prod");
        assert_eq!(doc["a"], "orders-prod");
        assert_eq!(doc["b"], 5);
        assert_eq!(doc["d"], "eu-west-1");
        assert_eq!(doc["c"], "${env:SECRET}");
        let findings = report.into_findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].message.contains("env:SECRET"));
    }
}
