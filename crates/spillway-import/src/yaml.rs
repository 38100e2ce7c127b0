//! The source file, YAML or JSON, as one JSON value.
//!
//! CloudFormation's short forms are YAML tags (`!GetAtt MyQueue.QueueName`,
//! `!Ref MyQueue`, `!Sub "…"`): they become the long forms
//! (`{"Fn::GetAtt": ["MyQueue", "QueueName"]}`) here, so the readers handle
//! one shape. JSON is YAML, so one parser reads both.

use serde_json::{Map, Value};
use serde_norway::Value as Yaml;

/// Parses `text` (YAML or JSON). The error is the parser's, with its line.
pub fn parse(text: &str) -> Result<Value, String> {
    let yaml: Yaml = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    Ok(to_json(yaml))
}

fn to_json(y: Yaml) -> Value {
    match y {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
            }
        }
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        Yaml::Tagged(t) => {
            let tag = t.tag.to_string();
            let name = tag.trim_start_matches('!');
            let value = to_json(t.value);
            long_form(name, value)
        }
    }
}

/// `!Name value` as CloudFormation's long form.
fn long_form(name: &str, value: Value) -> Value {
    let (key, value) = match (name, value) {
        ("Ref", v) => ("Ref".to_owned(), v),
        ("Condition", v) => ("Condition".to_owned(), v),
        // `!GetAtt Resource.Attribute`: the string form splits at the first dot.
        ("GetAtt", Value::String(s)) => {
            let parts = match s.split_once('.') {
                Some((r, a)) => vec![Value::from(r), Value::from(a)],
                None => vec![Value::from(s)],
            };
            ("Fn::GetAtt".to_owned(), Value::Array(parts))
        }
        (other, v) => (format!("Fn::{other}"), v),
    };
    let mut m = Map::new();
    m.insert(key, value);
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse;

    #[test]
    fn short_forms_become_long_forms() {
        let v = parse(
            "a: !GetAtt MyQueue.QueueName\nb: !Ref MyQueue\nc: !Sub '${AWS::StackName}-q'\nd: !GetAtt [Q, Arn]\n",
        )
        .expect("yaml");
        assert_eq!(v["a"], json!({"Fn::GetAtt": ["MyQueue", "QueueName"]}));
        assert_eq!(v["b"], json!({"Ref": "MyQueue"}));
        assert_eq!(v["c"], json!({"Fn::Sub": "${AWS::StackName}-q"}));
        assert_eq!(v["d"], json!({"Fn::GetAtt": ["Q", "Arn"]}));
    }

    #[test]
    fn json_is_read_too_and_a_broken_file_says_where() {
        assert_eq!(parse(r#"{"openapi": "3.0.1", "n": 5}"#).expect("json")["n"], 5);
        let err = parse("a: [1, 2\nb: c").expect_err("broken");
        assert!(err.contains("line"), "{err}");
    }
}
