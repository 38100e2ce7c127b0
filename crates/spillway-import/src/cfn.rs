//! CloudFormation resources a Serverless file declares: the SQS queues
//! (`AWS::SQS::Queue`, their `RedrivePolicy`) and the intrinsic functions
//! that name them (`Ref`, `Fn::GetAtt`).

use serde_json::Value;

use crate::{plan::QueuePlan, report::Report};

/// `resources.Resources`, or an empty object.
pub fn resources(doc: &Value) -> &serde_json::Map<String, Value> {
    static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> = std::sync::OnceLock::new();
    doc.pointer("/resources/Resources")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

/// The logical id an intrinsic points at: `{Ref: X}`, `{Fn::GetAtt: [X, attr]}`.
pub fn target(v: &Value) -> Option<(String, Option<String>)> {
    if let Some(r) = v.get("Ref").and_then(Value::as_str) {
        return Some((r.to_owned(), None));
    }
    let ga = v.get("Fn::GetAtt")?;
    match ga {
        Value::Array(a) => {
            let r = a.first()?.as_str()?.to_owned();
            Some((r, a.get(1).and_then(Value::as_str).map(str::to_owned)))
        }
        Value::String(s) => {
            let (r, a) = s.split_once('.').unwrap_or((s, ""));
            Some((r.to_owned(), (!a.is_empty()).then(|| a.to_owned())))
        }
        _ => None,
    }
}

/// A queue's name: a string, or an intrinsic to a queue in `resources`.
/// `None` (with a finding) when it cannot be known from the file.
pub fn queue_name(
    doc: &Value,
    v: &Value,
    place: &str,
    report: &mut Report,
) -> Option<(String, Option<String>)> {
    if let Some(s) = v.as_str() {
        return Some((last_segment(s), None));
    }
    let Some((logical, attr)) = target(v) else {
        report.not_carried(
            place,
            format!("{v}: only a name, `Ref` or `Fn::GetAtt` of a queue in `resources` is read"),
        );
        return None;
    };
    let Some(res) = resources(doc).get(&logical) else {
        report.not_carried(place, format!("`{logical}` is not in resources.Resources (imported from another stack?): write the queue's name"));
        return None;
    };
    if res.get("Type").and_then(Value::as_str) != Some("AWS::SQS::Queue") {
        report.not_carried(place, format!("`{logical}` is not an AWS::SQS::Queue"));
        return None;
    }
    if let Some(a) = attr.as_deref().filter(|a| !matches!(*a, "QueueName" | "Arn" | "QueueUrl")) {
        report.not_carried(place, format!("`Fn::GetAtt` of `{logical}.{a}` does not name a queue"));
        return None;
    }
    let source = format!("resources.Resources.{logical}");
    match res.pointer("/Properties/QueueName") {
        Some(Value::String(n)) => Some((n.clone(), Some(source))),
        Some(other) => {
            report.not_carried(
                format!("{source}.Properties.QueueName"),
                format!("{other} is computed at deploy time: the queue is imported as `{logical}`; put the real name"),
            );
            Some((logical, Some(source)))
        }
        None => {
            let fifo = res.pointer("/Properties/FifoQueue").and_then(Value::as_bool).unwrap_or(false);
            let name = if fifo { format!("{logical}.fifo") } else { logical.clone() };
            report.differs(
                format!("{source}.Properties"),
                format!("no QueueName: CloudFormation named the queue `<stack>-{logical}-<random>`; imported as `{name}`: use the deployed name to adopt the queue"),
            );
            Some((name, Some(source)))
        }
    }
}

/// `https://sqs.us-east-1.amazonaws.com/123/my-queue` or
/// `arn:aws:sqs:us-east-1:123:my-queue` → `my-queue`.
pub fn last_segment(s: &str) -> String {
    let s = s.trim_end_matches('/');
    let cut = s.rfind(['/', ':']).map_or(0, |i| i + 1);
    s[cut..].to_owned()
}

/// What `resources.Resources.<logical>` says of the queue.
pub fn queue_plan(doc: &Value, logical_source: &str, report: &mut Report) -> QueuePlan {
    let logical = logical_source.trim_start_matches("resources.Resources.");
    let mut plan = QueuePlan { source: Some(logical_source.to_owned()), ..QueuePlan::default() };
    let Some(props) =
        resources(doc).get(logical).and_then(|r| r.get("Properties")).and_then(Value::as_object)
    else {
        return plan;
    };
    let place = |k: &str| format!("{logical_source}.Properties.{k}");
    let int = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
    for (k, v) in props {
        match k.as_str() {
            "QueueName" | "FifoQueue" | "Tags" => {}
            "VisibilityTimeout" => plan.visibility_timeout_secs = int(v),
            "MessageRetentionPeriod" => plan.retention_secs = int(v),
            "MaximumMessageSize" => plan.max_message_bytes = int(v),
            "RedrivePolicy" => {
                let policy = match v {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                    other => other.clone(),
                };
                plan.max_receive_count = policy.get("maxReceiveCount").and_then(int).and_then(|n| u32::try_from(n).ok());
                let arn = policy.get("deadLetterTargetArn");
                plan.dlq = match arn {
                    Some(Value::String(s)) => Some(last_segment(s)),
                    Some(other) => target(other).map(|(l, _)| {
                        match resources(doc).get(&l).and_then(|r| r.pointer("/Properties/QueueName")).and_then(Value::as_str) {
                            Some(n) => n.to_owned(),
                            None => l,
                        }
                    }),
                    None => None,
                };
                if plan.max_receive_count.is_none() {
                    report.not_carried(place(k), "no readable maxReceiveCount: Spillway's default (5) is used");
                }
            }
            "ContentBasedDeduplication" if v.as_bool() == Some(true) => report.differs(
                place(k),
                "Spillway sends a deduplication id with every message (the route's dedup_key, else the message id), so equal bodies are never dropped as duplicates",
            ),
            "DelaySeconds" if int(v).unwrap_or(0) > 0 => report.differs(place(k), "kept on the queue by SQS when adopted; `queue ensure` does not set it on a new queue"),
            "ReceiveMessageWaitTimeSeconds" => report.note(place(k), "the consumer's long poll is `consumer.wait` (5 s by default)"),
            "KmsMasterKeyId" | "KmsDataKeyReusePeriodSeconds" | "SqsManagedSseEnabled" => report.note(
                place(k),
                "encryption stays SQS's: adopted queues keep it; `queue ensure` creates new queues with SQS's default (SSE-SQS)",
            ),
            other => report.not_carried(place(other), "not set by `queue ensure` (an adopted queue keeps it)"),
        }
    }
    if let (Some(dlq), Some(_)) = (&plan.dlq, plan.max_receive_count) {
        let name = props.get("QueueName").and_then(Value::as_str).unwrap_or(logical);
        let ours = spillway_queue::sqs::dlq_name(name);
        if *dlq != ours {
            report.differs(
                place("RedrivePolicy"),
                format!("the DLQ is `{dlq}`: `queue ensure` adopts an existing queue with its RedrivePolicy, but creates `{ours}` for a new one"),
            );
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_and_arns_name_their_queue() {
        assert_eq!(
            super::last_segment("https://sqs.us-east-1.amazonaws.com/123456789012/my-queue"),
            "my-queue"
        );
        assert_eq!(super::last_segment("arn:aws:sqs:us-east-1:123456789012:my-queue-dlq"), "my-queue-dlq");
        assert_eq!(super::last_segment("my-queue"), "my-queue");
    }
}
