//! `spillway import`: moving off API Gateway in one command.
//!
//! The people Spillway is for run API Gateway wired to SQS, set up with the
//! Serverless plugin `serverless-apigateway-service-proxy` or exported from
//! API Gateway as OpenAPI. Rewriting that by hand is where a migration goes
//! wrong (a CORS origin forgotten, a DLQ threshold changed), so this crate
//! reads either and writes a commented `spillway.toml` with the same routes,
//! queues, dead-letter threshold, CORS and API key requirement, plus a
//! report of every field it could not carry over and every behaviour that
//! will differ.
//!
//! The path of a file through it: [`yaml`] parses (CloudFormation's short
//! tags made long), [`vars`] resolves Serverless variables, [`serverless`]
//! or [`openapi`] fills a [`plan::Plan`] (with [`cfn`] for the queues and
//! [`vtl`] for the templates, [`origins`] for origin regexes), and [`emit`]
//! writes it. Velocity templates are never interpreted: the common shapes
//! are recognised, anything else is reported.

pub mod cfn;
pub mod emit;
pub mod openapi;
pub mod origins;
pub mod plan;
pub mod report;
pub mod serverless;
pub mod vars;
pub mod vtl;
pub mod yaml;

pub use report::{Finding, Kind};

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: not YAML or JSON: {why}")]
    Parse { file: String, why: String },
    #[error("{file}: {why}")]
    Unsupported { file: String, why: String },
}

/// What an import produced: the TOML text and the report.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub findings: Vec<Finding>,
    pub plan: plan::Plan,
}

/// Extra inputs.
#[derive(Debug, Default)]
pub struct Options {
    /// The output of `aws apigateway get-usage-plans` (an export carries no
    /// usage plans): their throttles become per-key rate limits.
    pub usage_plans: Option<String>,
}

/// Imports `text`, read from the file `file` (named in the output and in
/// errors). A Serverless file is recognised by `custom.apiGatewayServiceProxies`
/// (or `service` and `provider`), an export by `openapi` or `swagger`.
pub fn import(file: &str, text: &str, options: &Options) -> Result<Imported, ImportError> {
    let mut doc = yaml::parse(text).map_err(|why| ImportError::Parse { file: file.to_owned(), why })?;
    let unsupported = |why: String| ImportError::Unsupported { file: file.to_owned(), why };
    if !doc.is_object() {
        return Err(unsupported(
            "the file is not a mapping (a serverless.yml or an OpenAPI document)".to_owned(),
        ));
    }
    let mut report = report::Report::default();
    let mut plan = if doc.get("openapi").is_some() || doc.get("swagger").is_some() {
        openapi::read(&doc, &mut report).map_err(unsupported)?
    } else if doc.pointer("/custom/apiGatewayServiceProxies").is_some() || doc.get("provider").is_some() {
        vars::resolve(&mut doc, &mut report);
        serverless::read(&doc, &mut report).map_err(unsupported)?
    } else {
        return Err(unsupported(
            "neither a serverless.yml (no `provider`, no `custom.apiGatewayServiceProxies`) nor an OpenAPI document (no `openapi`/`swagger`)".to_owned(),
        ));
    };
    if let Some(text) = &options.usage_plans {
        let plans =
            yaml::parse(text).map_err(|why| ImportError::Parse { file: "--usage-plans".to_owned(), why })?;
        let items = plans.get("items").cloned().unwrap_or(plans);
        serverless::usage_plan(&items, "usage plans", &mut plan, &mut report);
        if plan.throttle.is_some() && plan.api_keys.is_none() {
            report.differs(
                "usage plans",
                "a usage plan throttles API keys, and no route requires one: the limit applies to nobody",
            );
        }
    }
    let alone: Vec<&str> = plan.routes.iter().filter(|r| r.body_alone).map(|r| r.path.as_str()).collect();
    if !alone.is_empty() {
        report.differs(
            format!("routes {}", alone.join(", ")),
            "API Gateway put the request body alone in the message; Spillway sends its envelope (docs/envelope.md: the body with the request's headers, path parameters, time and id). A consumer that reads the body alone needs `format = \"raw\"` on the route (offered, commented, in the file)",
        );
    }
    let default_body: Vec<&str> = plan
        .routes
        .iter()
        .filter(|r| r.success.as_ref().is_none_or(|s| s.body.is_none()))
        .map(|r| r.path.as_str())
        .collect();
    if !default_body.is_empty() {
        report.differs(
            format!("routes {}", default_body.join(", ")),
            "the 2xx body is Spillway's (`{\"id\":…,\"status\":\"accepted\"}`), not SQS's SendMessageResponse (set `success.body`, with `${id}` for the message id, if clients read it)",
        );
    }
    report.note(
        "errors",
        "every refusal is Spillway's JSON error body (`{\"error\":{\"code\",\"message\"}}`) with its own status (docs/configuration.md, and `spillway openapi`)",
    );
    let toml = emit::toml(&plan, file);
    Ok(Imported { toml, findings: report.into_findings(), plan })
}

#[cfg(test)]
mod tests;
