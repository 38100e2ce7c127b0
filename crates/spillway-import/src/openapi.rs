//! An API Gateway REST export (OpenAPI 3 or Swagger 2, "with API Gateway
//! extensions"): every method whose `x-amazon-apigateway-integration` is of
//! type `aws` to SQS, the CORS of the `OPTIONS` mock integrations and the
//! integration responses, and the API key requirement.

use serde_json::Value;

use crate::{
    cfn,
    plan::{self, ApiKeysPlan, Backend, CorsPlan, KeyPlan, Plan, QueuePlan, RoutePlan},
    report::Report,
    serverless::{self, apply_request, apply_response, response_parameters},
    vtl,
};

const EXT: &str = "x-amazon-apigateway-integration";

/// Reads the export. `Err` when there is nothing to import.
pub fn read(doc: &Value, report: &mut Report) -> Result<Plan, String> {
    let paths = doc.get("paths").and_then(Value::as_object).ok_or("no `paths`: not an OpenAPI document")?;
    let version = doc.get("openapi").or_else(|| doc.get("swagger")).and_then(Value::as_str).unwrap_or("?");
    let key_schemes = api_key_schemes(doc, report);
    let global_security = doc.get("security");
    let mut region = None;
    let mut plan =
        Plan::new(format!("an API Gateway export (OpenAPI {version})"), Backend::Sqs { region: None });
    let mut any_integration = false;
    for (p, item) in paths {
        let Some(ops) = item.as_object() else { continue };
        let preflight = ops.get("options").map(|o| preflight_cors(o, &format!("paths.{p}.options"), report));
        for (method, op) in ops {
            if method == "options" || !op.is_object() || method == "parameters" {
                continue;
            }
            let place = format!("paths.{p}.{method}");
            let Some(integration) = op.get(EXT) else {
                report.not_carried(&place, format!("no `{EXT}`: export the API with API Gateway extensions"));
                continue;
            };
            any_integration = true;
            let kind = integration.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
            let uri = integration.get("uri").and_then(Value::as_str).unwrap_or("");
            if kind != "aws" || !uri.contains(":sqs:") {
                report.not_carried(
                    &place,
                    format!("a `{kind}` integration to `{uri}`: only `aws` integrations to SQS are imported"),
                );
                continue;
            }
            let Some(queue) = queue_of(uri, integration) else {
                report.not_carried(&place, format!("`{uri}` names no queue (an `action/SendMessage` URI needs `integration.request.querystring.QueueUrl`)"));
                continue;
            };
            region = region.or_else(|| uri.split(':').nth(3).map(str::to_owned));
            let methods = match method.to_ascii_uppercase().as_str() {
                m @ ("POST" | "PUT" | "PATCH") => vec![m.to_owned()],
                "X-AMAZON-APIGATEWAY-ANY-METHOD" => {
                    report.differs(&place, "ANY: Spillway takes POST, PUT and PATCH");
                    vec!["POST".into(), "PUT".into(), "PATCH".into()]
                }
                other => {
                    report.not_carried(&place, format!("`{other}` carries no event body"));
                    continue;
                }
            };
            let mut route = RoutePlan {
                cors: preflight.clone().flatten(),
                require_api_key: requires_key(
                    op.get("security").or(global_security),
                    &key_schemes,
                    &place,
                    report,
                ),
                ..RoutePlan::new(&place, plan::path(p), methods, queue.clone())
            };
            integration_request(integration, &format!("{place}.{EXT}"), &mut route, report);
            integration_responses(integration, &format!("{place}.{EXT}.responses"), &mut route, report);
            plan.queues.entry(queue).or_insert_with(|| QueuePlan { source: None, ..QueuePlan::default() });
            plan.add_route(route, report);
        }
    }
    if !any_integration {
        return Err(format!("no `{EXT}` anywhere: export the API with API Gateway extensions (`aws apigateway get-export --parameters extensions=apigateway`)"));
    }
    if plan.routes.is_empty() {
        return Err("no route could be carried over (see the report above)".to_owned());
    }
    plan.backend = Backend::Sqs { region };
    if plan.routes.iter().any(|r| r.require_api_key) {
        let header = key_schemes.first().cloned().unwrap_or_else(|| "x-api-key".into());
        plan.api_keys = Some(ApiKeysPlan { header, names: Vec::new() });
        report.differs(
            "security",
            format!("API keys are read from `{}` (one per line; `aws apigateway get-api-keys --include-values` lists them): never from spillway.toml. `config check` needs the file", crate::emit::API_KEYS_FILE),
        );
    }
    for (name, q) in plan.queues.iter() {
        if q.max_receive_count.is_none() {
            report.not_carried(
                format!("queue {name}"),
                "an export says nothing of the queue's RedrivePolicy: Spillway's default (5 receives, 30 s visibility) is written; set what `aws sqs get-queue-attributes` says, or `queue ensure` adopts the queue and warns when they differ",
            );
        }
    }
    if doc.get("x-amazon-apigateway-gateway-responses").is_some() {
        report.note("x-amazon-apigateway-gateway-responses", "Spillway's error answers carry the route's CORS headers (the allowed origin reflected) without a gateway response of their own");
    }
    if let Some(base) = doc.get("basePath").and_then(Value::as_str).filter(|b| *b != "/") {
        report.differs("basePath", format!("`{base}` (the stage) is not part of Spillway's paths: clients send to `https://<your host>/…` without it, or put it in each route's `path`"));
    }
    Ok(plan)
}

/// `arn:aws:apigateway:us-east-1:sqs:path/123456789012/my-queue`, or an
/// `action/SendMessage` URI with a `QueueUrl` parameter.
fn queue_of(uri: &str, integration: &Value) -> Option<String> {
    let (_, rest) = uri.split_once(":sqs:")?;
    if let Some(p) = rest.strip_prefix("path/") {
        let name = cfn::last_segment(p);
        return (!name.is_empty()).then_some(name);
    }
    let url = integration.pointer("/requestParameters/integration.request.querystring.QueueUrl")?.as_str()?;
    let name = cfn::last_segment(url.trim_matches('\''));
    (!name.is_empty()).then_some(name)
}

/// The names of the header API keys come in, per security scheme name.
fn api_key_schemes(doc: &Value, report: &mut Report) -> Vec<String> {
    if let Some(src) = doc.get("x-amazon-apigateway-api-key-source").and_then(Value::as_str) {
        if src.eq_ignore_ascii_case("AUTHORIZER") {
            report.not_carried("x-amazon-apigateway-api-key-source", "AUTHORIZER: keys from a Lambda authorizer have no counterpart; Spillway reads them from a header");
        }
    }
    let schemes = doc.pointer("/components/securitySchemes").or_else(|| doc.get("securityDefinitions"));
    let Some(m) = schemes.and_then(Value::as_object) else { return Vec::new() };
    let mut headers = Vec::new();
    for (name, s) in m {
        let place = format!("securitySchemes.{name}");
        match (s.get("type").and_then(Value::as_str), s.get("in").and_then(Value::as_str)) {
            (Some("apiKey"), Some("header")) if s.get("x-amazon-apigateway-authtype").is_none() => {
                headers.push(s.get("name").and_then(Value::as_str).unwrap_or("x-api-key").to_owned());
            }
            _ => report.not_carried(&place, "an authorizer (IAM, Cognito, Lambda): Spillway has none; the routes that use it are OPEN as imported: require API keys, a webhook signature (`verify`), or put an authenticating proxy in front"),
        }
    }
    headers
}

/// Whether `security` asks for an API key (a scheme of type `apiKey`).
fn requires_key(security: Option<&Value>, key_schemes: &[String], place: &str, report: &mut Report) -> bool {
    let Some(list) = security.and_then(Value::as_array) else { return false };
    let names: Vec<&String> = list.iter().filter_map(Value::as_object).flat_map(|m| m.keys()).collect();
    let key = names.iter().any(|n| n.as_str() == "api_key" || n.to_ascii_lowercase().contains("key"));
    if !key && !names.is_empty() {
        report.not_carried(
            place,
            format!("secured by {names:?}: no counterpart in Spillway; the route is OPEN as imported"),
        );
    }
    key && (!key_schemes.is_empty() || names.iter().any(|n| n.as_str() == "api_key"))
}

/// The request side: templates per content type, or the parameters form
/// (`Action` and `MessageBody=method.request.body`).
fn integration_request(i: &Value, at: &str, route: &mut RoutePlan, report: &mut Report) {
    if let Some(templates) = i.get("requestTemplates").and_then(Value::as_object) {
        for (ct, t) in templates {
            let place = format!("{at}.requestTemplates.{ct}");
            route.content_types.push(ct.clone());
            apply_request(&vtl::sqs_request(t.as_str().unwrap_or_default()), &place, route, report);
        }
        if i.get("passthroughBehavior")
            .and_then(Value::as_str)
            .is_some_and(|p| !p.eq_ignore_ascii_case("never"))
        {
            report.differs(format!("{at}.passthroughBehavior"), "another content type got through untransformed at API Gateway; Spillway refuses it with 415 (`content_types`)");
        }
    }
    let Some(params) = i.get("requestParameters").and_then(Value::as_object) else { return };
    for (k, v) in params {
        let value = v.as_str().unwrap_or_default();
        let place = format!("{at}.requestParameters.{k}");
        match k.as_str() {
            "integration.request.header.Content-Type" | "integration.request.querystring.QueueUrl" => {}
            "integration.request.querystring.Action" if value == "'SendMessage'" => {}
            "integration.request.querystring.MessageBody" if value == "method.request.body" => {
                route.body_alone = true
            }
            "integration.request.querystring.MessageGroupId"
            | "integration.request.querystring.MessageDeduplicationId"
                if value.starts_with("method.request.header.") =>
            {
                let header = KeyPlan::Header(value.trim_start_matches("method.request.header.").to_owned());
                if k.ends_with("MessageGroupId") {
                    route.ordering_key = Some(header);
                    report.note(&place, "MessageGroupId → `ordering_key` (on a FIFO queue, the group id)");
                } else {
                    route.dedup_key = Some(header);
                    report.note(&place, "MessageDeduplicationId → `dedup_key`");
                }
            }
            k if k.starts_with("integration.request.querystring.MessageAttribute.") => {
                let mut one = serde_json::Map::new();
                one.insert(k.to_owned(), v.clone());
                serverless::request_parameters(
                    &Value::Object(one),
                    &format!("{at}.requestParameters"),
                    route,
                    report,
                );
            }
            _ => report.not_carried(&place, format!("`{value}`: not carried")),
        }
    }
}

/// The 2xx integration response: status, body template, CORS headers.
fn integration_responses(i: &Value, at: &str, route: &mut RoutePlan, report: &mut Report) {
    let Some(responses) = i.get("responses").and_then(Value::as_object) else { return };
    for (pattern, r) in responses {
        let place = format!("{at}.{pattern}");
        let status = r.get("statusCode").and_then(|s| {
            s.as_str()
                .and_then(|t| t.parse::<u16>().ok())
                .or_else(|| s.as_u64().and_then(|n| u16::try_from(n).ok()))
        });
        match status {
            Some(s @ 200..=299) => {
                let template =
                    r.pointer("/responseTemplates/application~1json").and_then(Value::as_str).unwrap_or("");
                let mut read = vtl::response(template);
                response_parameters(r.get("responseParameters"), &place, &mut read, report);
                apply_response(&read, s, &place, route, report);
            }
            _ => {
                report.differs(&place, "an error answer: Spillway's errors have its own JSON body and status")
            }
        }
    }
}

/// The CORS an `OPTIONS` mock integration answers with.
fn preflight_cors(op: &Value, at: &str, report: &mut Report) -> Option<CorsPlan> {
    let default = op
        .pointer(&format!("/{EXT}/responses/default"))
        .or_else(|| op.get(EXT)?.get("responses")?.as_object()?.values().next())?;
    let mut scratch =
        RoutePlan { success: None, ..RoutePlan::new(at, String::new(), Vec::new(), String::new()) };
    let template =
        default.pointer("/responseTemplates/application~1json").and_then(Value::as_str).unwrap_or("");
    let mut read = vtl::response(template);
    // The preflight's body is empty; what is left is the mock's `{}`.
    read.body.clear();
    read.unrecognised.retain(|u| !u.starts_with("the body"));
    response_parameters(
        default.get("responseParameters"),
        &format!("{at}.{EXT}.responses.default"),
        &mut read,
        report,
    );
    apply_response(&read, 200, &format!("{at}.{EXT}.responses.default"), &mut scratch, report);
    let mut cors = scratch.cors?;
    if let Some(params) = default.get("responseParameters").and_then(Value::as_object) {
        for (k, v) in params {
            let l = v.as_str().unwrap_or_default().trim_matches('\'');
            if k.eq_ignore_ascii_case("method.response.header.Access-Control-Allow-Headers") {
                cors.headers = l.split(',').map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect();
            } else if k.eq_ignore_ascii_case("method.response.header.Access-Control-Max-Age") {
                cors.max_age_secs = l.parse().ok();
            }
        }
    }
    Some(cors)
}
