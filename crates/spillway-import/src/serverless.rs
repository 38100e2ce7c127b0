//! `serverless.yml` with the `serverless-apigateway-service-proxy` plugin:
//! its `custom.apiGatewayServiceProxies` list, the queues in `resources`,
//! and the provider's API keys and usage plan.

use serde_json::Value;

use crate::{
    cfn,
    plan::{
        self, ApiKeysPlan, Backend, CorsPlan, KeyPlan, Plan, QueuePlan, RoutePlan, SuccessPlan, ThrottlePlan,
    },
    report::Report,
    vtl,
};

/// The headers `cors: true` allows (the plugin's default).
const PLUGIN_CORS_HEADERS: [&str; 6] =
    ["Content-Type", "X-Amz-Date", "Authorization", "X-Api-Key", "X-Amz-Security-Token", "X-Amz-User-Agent"];

/// Reads the file. `Err` when there is nothing to import.
pub fn read(doc: &Value, report: &mut Report) -> Result<Plan, String> {
    let proxies = doc.pointer("/custom/apiGatewayServiceProxies").and_then(Value::as_array).ok_or(
        "no `custom.apiGatewayServiceProxies` list: not a serverless-apigateway-service-proxy setup",
    )?;
    let kinds: Vec<(usize, &str, &Value)> = proxies
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let m = p.as_object()?;
            let (k, v) = m.iter().next()?;
            Some((i, k.as_str(), v))
        })
        .collect();
    if kinds.len() != proxies.len() {
        return Err("custom.apiGatewayServiceProxies: every entry must be one `kind: {…}` object".to_owned());
    }
    let has_sqs = kinds.iter().any(|(_, k, _)| *k == "sqs");
    let has_kinesis = kinds.iter().any(|(_, k, _)| *k == "kinesis");
    let region = doc.pointer("/provider/region").and_then(Value::as_str).map(str::to_owned);
    let backend = if has_sqs || !has_kinesis {
        Backend::Sqs { region: Some(region.unwrap_or_else(|| "us-east-1".to_owned())) }
    } else {
        Backend::Kafka
    };
    let source =
        "serverless.yml (the serverless-apigateway-service-proxy plugin's custom.apiGatewayServiceProxies)";
    let mut plan = Plan::new(source, backend.clone());
    for (i, kind, entry) in kinds {
        let place = format!("custom.apiGatewayServiceProxies[{i}].{kind}");
        match (kind, &backend) {
            ("sqs", _) => sqs(doc, entry, &place, &mut plan, report),
            ("kinesis", Backend::Kafka) => kinesis(doc, entry, &place, &mut plan, report),
            ("kinesis", Backend::Sqs { .. }) => report.not_carried(
                &place,
                "a Kinesis route beside SQS routes: one Spillway gateway has one backend; import the Kinesis routes into a second gateway with `backend = \"kafka\"` (a file with only them)",
            ),
            ("sns", _) => report.not_carried(&place, "SNS is not supported: Spillway has no fan-out backend; a queue per subscriber, or Kafka topics with one consumer group each, do the same"),
            (other, _) => report.not_carried(&place, format!("`{other}` proxies are not supported: Spillway only stores events into a queue")),
        }
    }
    if plan.routes.is_empty() {
        return Err("no route could be carried over (see the report above)".to_owned());
    }
    keys_and_usage_plan(doc, &mut plan, report);
    Ok(plan)
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn methods(entry: &Value, place: &str, report: &mut Report) -> Option<Vec<String>> {
    let m = str_of(entry, "method").unwrap_or("post").to_ascii_uppercase();
    match m.as_str() {
        "POST" | "PUT" | "PATCH" => Some(vec![m]),
        "ANY" => {
            report.differs(
                format!("{place}.method"),
                "`any`: Spillway takes POST, PUT and PATCH (a GET or DELETE carries no event)",
            );
            Some(vec!["POST".into(), "PUT".into(), "PATCH".into()])
        }
        other => {
            report.not_carried(
                format!("{place}.method"),
                format!("`{other}` carries no event body: Spillway takes POST, PUT and PATCH"),
            );
            None
        }
    }
}

fn sqs(doc: &Value, entry: &Value, place: &str, plan: &mut Plan, report: &mut Report) {
    let Some(path) = str_of(entry, "path") else {
        report.not_carried(place, "no `path`");
        return;
    };
    let Some(methods) = methods(entry, place, report) else { return };
    let Some(queue_ref) = entry.get("queueName") else {
        report.not_carried(place, "no `queueName`");
        return;
    };
    let Some((queue, queue_source)) = cfn::queue_name(doc, queue_ref, &format!("{place}.queueName"), report)
    else {
        return;
    };
    // The plugin's SQS integration sends the body alone unless a template says otherwise.
    let mut route =
        RoutePlan { body_alone: true, ..RoutePlan::new(place, plan::path(path), methods, queue.clone()) };
    let obj = entry.as_object().cloned().unwrap_or_default();
    for (k, v) in &obj {
        let at = format!("{place}.{k}");
        match k.as_str() {
            "path" | "method" | "queueName" => {}
            "cors" => route.cors = cors(v, &at, report),
            "private" => route.require_api_key = v.as_bool().unwrap_or(false),
            "authorizationType" => authorization(v, &at, report),
            "authorizerId" | "authorizationScopes" => {}
            "roleArn" => {
                report.note(&at, "no role: the gateway's own AWS credentials send (docs/deploy.md, IAM)")
            }
            "acceptParameters" => report
                .note(&at, "Spillway reads any header; `forward_headers` says which go into the message"),
            "requestParameters" => request_parameters(v, &at, &mut route, report),
            "request" => request_template(v, &at, &mut route, report),
            "response" => response(v, &at, &mut route, report),
            other => report.not_carried(&at, format!("`{other}` is not read")),
        }
    }
    let queue_plan = match queue_source {
        Some(src) => cfn::queue_plan(doc, &src, report),
        None => QueuePlan::default(),
    };
    plan.queues.entry(queue).or_insert(queue_plan);
    plan.add_route(route, report);
}

fn authorization(v: &Value, at: &str, report: &mut Report) {
    match v.as_str().unwrap_or("NONE") {
        "NONE" => {}
        other => report.not_carried(
            at,
            format!("`{other}`: Spillway has no IAM, Cognito or Lambda authorizers, so this route is OPEN as imported: require API keys (`private: true`), a webhook signature (`verify`), or put an authenticating proxy in front"),
        ),
    }
}

/// `cors: true` or `{ origin | origins, headers, allowCredentials, maxAge, cacheControl }`.
fn cors(v: &Value, at: &str, report: &mut Report) -> Option<CorsPlan> {
    let default_headers = || PLUGIN_CORS_HEADERS.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    match v {
        Value::Bool(false) | Value::Null => None,
        Value::Bool(true) => Some(CorsPlan {
            origins: vec!["*".into()],
            credentials: false,
            headers: default_headers(),
            max_age_secs: None,
        }),
        Value::Object(m) => {
            let mut c = CorsPlan { headers: default_headers(), ..CorsPlan::default() };
            for (k, item) in m {
                let place = format!("{at}.{k}");
                match k.as_str() {
                    "origin" => c.origins.extend(item.as_str().map(str::to_owned)),
                    "origins" => c.origins.extend(strings(item)),
                    "headers" => c.headers = strings(item),
                    "allowCredentials" => c.credentials = item.as_bool().unwrap_or(false),
                    "maxAge" => c.max_age_secs = item.as_u64(),
                    "cacheControl" => report.not_carried(
                        &place,
                        "Spillway's preflight answer sets no Cache-Control (browsers cache it for `max_age`)",
                    ),
                    other => report.not_carried(&place, format!("`{other}` is not read")),
                }
            }
            if c.origins.is_empty() {
                c.origins.push("*".into());
            }
            Some(c)
        }
        other => {
            report.not_carried(at, format!("{other}: not `true` or an object"));
            None
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Value::String(s) => s.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// `integration.request.querystring.MessageAttribute.N.*` from headers.
pub fn request_parameters(v: &Value, at: &str, route: &mut RoutePlan, report: &mut Report) {
    let Some(m) = v.as_object() else { return };
    for (k, item) in m {
        let place = format!("{at}.{k}");
        let value = item.as_str().unwrap_or_default();
        let attr = k
            .strip_prefix("integration.request.querystring.MessageAttribute.")
            .and_then(|r| r.split_once('.'));
        match attr {
            Some((_, "Name")) | Some((_, "Value.DataType")) => {}
            Some((_, "Value.StringValue")) => match value.strip_prefix("method.request.header.") {
                Some(h) => {
                    route.forward_headers.push(h.to_owned());
                    report.differs(&place, format!("the `{h}` header travels in the envelope's headers (with `format = \"raw\"`: a message attribute named after the header)"));
                }
                None => report.not_carried(
                    &place,
                    format!("`{value}`: only request headers are carried into the message"),
                ),
            },
            _ => report.not_carried(&place, "only message attributes from request headers are carried"),
        }
    }
}

/// `request.template.<content type>`: the SQS request shape.
fn request_template(v: &Value, at: &str, route: &mut RoutePlan, report: &mut Report) {
    let Some(templates) = v.get("template").and_then(Value::as_object) else {
        report.not_carried(at, "only `request.template` is read");
        return;
    };
    for (ct, t) in templates {
        let place = format!("{at}.template.{ct}");
        let Some(text) = t.as_str() else {
            report.not_carried(&place, "not a string (an unresolved `Fn::Sub`?): not interpreted");
            continue;
        };
        route.content_types.push(ct.clone());
        apply_request(&vtl::sqs_request(text), &place, route, report);
    }
}

/// What a recognised SQS request template means for the route.
pub fn apply_request(r: &vtl::SqsRequest, place: &str, route: &mut RoutePlan, report: &mut Report) {
    let key = |s: &vtl::Source| match s {
        vtl::Source::Header(h) => Some(KeyPlan::Header(h.clone())),
        vtl::Source::Pointer(p) => Some(KeyPlan::JsonPointer(p.clone())),
        _ => None,
    };
    route.body_alone = r.body_alone;
    if let Some(k) = r.group_id.as_ref().and_then(key) {
        route.ordering_key = Some(k);
        report.note(place, "MessageGroupId → `ordering_key` (on a FIFO queue, the group id)");
    }
    if let Some(k) = r.dedup_id.as_ref().and_then(key) {
        route.dedup_key = Some(k);
        report.note(place, "MessageDeduplicationId → `dedup_key`");
    }
    for (name, source) in &r.attributes {
        if let vtl::Source::Header(h) = source {
            route.forward_headers.push(h.clone());
            if !name.eq_ignore_ascii_case(h) {
                report.differs(place, format!("the attribute `{name}` (from the `{h}` header) travels as the header `{h}` in the envelope"));
            }
        }
    }
    if !r.unrecognised.is_empty() {
        report.not_carried(
            place,
            format!(
                "not interpreted (Velocity templates are never guessed at): {}. Spillway stores the whole request in its envelope (docs/envelope.md: body, headers, path parameters); move what the template computed into the consumer",
                r.unrecognised.join("; ")
            ),
        );
    }
}

/// `response.template.{success, clientError, serverError}` or the list of
/// integration responses.
fn response(v: &Value, at: &str, route: &mut RoutePlan, report: &mut Report) {
    if let Some(t) = v.get("template") {
        if let Some(success) = t.get("success").and_then(Value::as_str) {
            apply_response(&vtl::response(success), 200, &format!("{at}.template.success"), route, report);
        }
        for k in ["clientError", "serverError"] {
            if t.get(k).is_some() {
                report.differs(format!("{at}.template.{k}"), "Spillway's errors have its own JSON body (`{\"error\":{\"code\",\"message\"}}`), the same for every route");
            }
        }
        return;
    }
    let Some(list) = v.as_array() else {
        report.not_carried(at, "not `template` or a list of responses");
        return;
    };
    for (i, r) in list.iter().enumerate() {
        let place = format!("{at}[{i}]");
        let status =
            r.get("statusCode").and_then(|s| s.as_u64().or_else(|| s.as_str().and_then(|t| t.parse().ok())));
        match status.and_then(|s| u16::try_from(s).ok()) {
            Some(s @ 200..=299) => {
                let template = r.pointer("/responseTemplates/application~1json").and_then(Value::as_str).unwrap_or("");
                let mut read = vtl::response(template);
                response_parameters(r.get("responseParameters"), &place, &mut read, report);
                apply_response(&read, s, &place, route, report);
            }
            _ => report.differs(&place, "an error answer: Spillway's errors have its own JSON body and status (docs/configuration.md)"),
        }
    }
}

/// `method.response.header.Access-Control-Allow-*` set by the response.
pub fn response_parameters(v: Option<&Value>, at: &str, read: &mut vtl::Response, report: &mut Report) {
    let Some(m) = v.and_then(Value::as_object) else { return };
    for (k, item) in m {
        let value = item.as_str().unwrap_or_default();
        let literal = value.strip_prefix('\'').and_then(|s| s.strip_suffix('\''));
        match (k.strip_prefix("method.response.header."), literal) {
            (Some(h), Some(l)) if h.eq_ignore_ascii_case("Access-Control-Allow-Origin") => {
                read.reflects = true;
                if l == "*" {
                    read.any = true;
                } else {
                    read.checks.push(vtl::Check::Exact(l.to_owned()));
                }
            }
            (Some(h), None)
                if h.eq_ignore_ascii_case("Access-Control-Allow-Origin")
                    && value.eq_ignore_ascii_case("method.request.header.origin") =>
            {
                read.reflects = true;
                read.any = true;
            }
            (Some(h), Some("true")) if h.eq_ignore_ascii_case("Access-Control-Allow-Credentials") => {
                read.credentials = true
            }
            (Some(h), _) if h.to_ascii_lowercase().starts_with("access-control-") => {}
            _ => report.not_carried(
                format!("{at}.responseParameters.{k}"),
                "only CORS headers are carried from a response",
            ),
        }
    }
}

/// The 2xx answer: status, body, and the CORS it reflects.
pub fn apply_response(
    r: &vtl::Response,
    status: u16,
    place: &str,
    route: &mut RoutePlan,
    report: &mut Report,
) {
    let body = (!r.body.trim().is_empty() && r.unrecognised.is_empty()).then(|| r.body.trim().to_owned());
    route.success = Some(SuccessPlan { status, body });
    if !r.unrecognised.is_empty() {
        report.not_carried(place, format!("not interpreted (Velocity templates are never guessed at): {}; Spillway's success body is used", r.unrecognised.join("; ")));
    }
    if !r.reflects {
        return;
    }
    let cors = route.cors.get_or_insert_with(CorsPlan::default);
    cors.credentials |= r.credentials;
    if r.any {
        if cors.credentials {
            report.not_carried(place, "the template reflects ANY origin with credentials: any site could send as your users. Spillway refuses that; list the allowed origins in `allowed_origins`");
            cors.origins.retain(|o| o != "*");
        } else if !cors.origins.iter().any(|o| o == "*") {
            cors.origins.push("*".into());
        }
    }
    for check in &r.checks {
        let patterns = match check {
            vtl::Check::Exact(o) => vec![o.clone()],
            vtl::Check::Regex(re) => match crate::origins::from_regex(re) {
                Ok(patterns) => patterns,
                Err(e) => {
                    report.not_carried(place, format!("origin regex not carried: {e}; add the origins it should allow to `allowed_origins` by hand"));
                    continue;
                }
            },
        };
        for p in patterns {
            if !cors.origins.contains(&p) {
                cors.origins.push(p);
            }
        }
    }
    if cors.credentials {
        // `*` with credentials: the reflected list replaces it.
        if cors.origins.len() > 1 {
            cors.origins.retain(|o| o != "*");
        }
    }
    report.note(place, "its Access-Control-Allow-Origin (a fixed value, or a template reflecting the Origin) → `allowed_origins` (+ `allow_credentials`): Spillway reflects an allowed origin on the preflight and on every answer, errors included");
}

fn kinesis(doc: &Value, entry: &Value, place: &str, plan: &mut Plan, report: &mut Report) {
    let Some(path) = str_of(entry, "path") else {
        report.not_carried(place, "no `path`");
        return;
    };
    let Some(methods) = methods(entry, place, report) else { return };
    let stream = match entry.get("streamName") {
        Some(Value::String(s)) => Some((s.clone(), None)),
        Some(v) => cfn::target(v).map(|(logical, _)| {
            let res = cfn::resources(doc).get(&logical);
            let name = res
                .and_then(|r| r.pointer("/Properties/Name"))
                .and_then(Value::as_str)
                .map_or(logical.clone(), str::to_owned);
            let shards = res.and_then(|r| r.pointer("/Properties/ShardCount")).and_then(Value::as_u64);
            (name, shards)
        }),
        None => None,
    };
    let Some((topic, shards)) = stream else {
        report.not_carried(format!("{place}.streamName"), "no stream name that the file can say");
        return;
    };
    let mut route =
        RoutePlan { body_alone: true, ..RoutePlan::new(place, plan::path(path), methods, topic.clone()) };
    for (k, v) in entry.as_object().cloned().unwrap_or_default() {
        let at = format!("{place}.{k}");
        match k.as_str() {
            "path" | "method" | "streamName" => {}
            "cors" => route.cors = cors(&v, &at, report),
            "private" => route.require_api_key = v.as_bool().unwrap_or(false),
            "authorizationType" => authorization(&v, &at, report),
            "partitionKey" => match &v {
                Value::Object(m) if m.contains_key("bodyParam") => {
                    let p = m["bodyParam"].as_str().unwrap_or_default();
                    route.ordering_key = Some(KeyPlan::JsonPointer(format!("/{}", p.replace('.', "/"))));
                    report.note(&at, "bodyParam → `ordering_key` (the Kafka record key: same partition, same order)");
                }
                _ => report.not_carried(&at, "only `bodyParam` maps (to `ordering_key`); a path or query parameter or a fixed key has no counterpart, so records spread over partitions"),
            },
            "action" if v.as_str() == Some("PutRecords") => report.not_carried(&at, "PutRecords (many records per request): Spillway stores one request as one message"),
            other => report.not_carried(&at, format!("`{other}` is not read")),
        }
    }
    report.differs(place, "Kinesis becomes a Kafka topic: records keep the body as sent (not base64), and Spillway adds a DLQ topic (`<topic>.dlq`, 5 receives) that Kinesis has not");
    plan.queues.entry(topic).or_insert(QueuePlan {
        source: None,
        partitions: shards.and_then(|s| u32::try_from(s).ok()),
        ..QueuePlan::default()
    });
    plan.add_route(route, report);
}

/// `provider.apiGateway.apiKeys` (or `provider.apiKeys`) and the usage plan.
fn keys_and_usage_plan(doc: &Value, plan: &mut Plan, report: &mut Report) {
    let gw = doc.pointer("/provider/apiGateway");
    let keys = gw.and_then(|g| g.get("apiKeys")).or_else(|| doc.pointer("/provider/apiKeys"));
    let any_private = plan.routes.iter().any(|r| r.require_api_key);
    let mut names = Vec::new();
    let mut values = false;
    fn collect(v: &Value, names: &mut Vec<String>, values: &mut bool) {
        match v {
            Value::String(s) => names.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|i| collect(i, names, values)),
            Value::Object(m) if m.contains_key("name") || m.contains_key("value") => {
                names.extend(m.get("name").and_then(Value::as_str).map(str::to_owned));
                *values |= m.contains_key("value");
            }
            // `{ free: [...] }`: keys grouped by usage plan.
            Value::Object(m) => m.values().for_each(|i| collect(i, names, values)),
            _ => {}
        }
    }
    if let Some(k) = keys {
        collect(k, &mut names, &mut values);
    }
    if any_private || !names.is_empty() {
        plan.api_keys = Some(ApiKeysPlan { header: "x-api-key".into(), names });
        report.differs(
            "provider.apiGateway.apiKeys",
            format!(
                "API keys are read from `{}` (one per line; `aws apigateway get-api-keys --include-values` lists them): never from spillway.toml. `config check` needs the file",
                crate::emit::API_KEYS_FILE
            ),
        );
        if values {
            report.note(
                "provider.apiGateway.apiKeys",
                "the key values in the file were not copied into spillway.toml",
            );
        }
    }
    let usage = gw.and_then(|g| g.get("usagePlan")).or_else(|| doc.pointer("/provider/usagePlan"));
    if let Some(u) = usage {
        usage_plan(u, "provider.apiGateway.usagePlan", plan, report);
    }
}

/// A usage plan (or a list of named plans): its throttle per API key.
pub fn usage_plan(u: &Value, at: &str, plan: &mut Plan, report: &mut Report) {
    let is_plan = |v: &Value| ["throttle", "quota", "Throttle", "Quota"].iter().any(|k| v.get(k).is_some());
    let plans: Vec<(String, &Value)> = match u {
        // `aws apigateway get-usage-plans`: the plans themselves.
        Value::Array(a) if a.iter().all(is_plan) => a
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!(
                        "{at}.{}",
                        p.get("name").and_then(Value::as_str).map_or(i.to_string(), str::to_owned)
                    ),
                    p,
                )
            })
            .collect(),
        // Serverless: `- free: {…}`, named plans.
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|m| m.iter().map(|(k, v)| (format!("{at}.{k}"), v)))
            .collect(),
        other => vec![(at.to_owned(), other)],
    };
    for (place, p) in plans {
        let throttle = p.get("throttle").or_else(|| p.get("Throttle"));
        if let Some(t) = throttle {
            let rate = t.get("rateLimit").or_else(|| t.get("RateLimit")).and_then(Value::as_f64);
            let burst = t.get("burstLimit").or_else(|| t.get("BurstLimit")).and_then(Value::as_u64);
            match (rate, burst) {
                (Some(rate), Some(burst)) if rate > 0.0 && burst > 0 => match plan.throttle {
                    Some(existing) if existing.rate != rate || existing.burst != burst => report.not_carried(
                        &place,
                        "a second usage plan with another throttle: Spillway has one `per_key` limit per route; the first plan's is used",
                    ),
                    _ => plan.throttle = Some(ThrottlePlan { rate, burst }),
                },
                _ => report.not_carried(&place, "a throttle without a positive rateLimit and burstLimit"),
            }
        }
        if p.get("quota").or_else(|| p.get("Quota")).is_some() {
            report.not_carried(
                format!("{place}.quota"),
                "quotas (requests per day/week/month) are not supported: only rates and bursts",
            );
        }
    }
}
