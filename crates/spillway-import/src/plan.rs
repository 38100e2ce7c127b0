//! What an import found, in Spillway's terms, whatever it was read from:
//! the readers (`serverless`, `openapi`) fill a [`Plan`], and `emit` writes
//! it as TOML.

use std::collections::BTreeMap;

use crate::report::Report;

/// The backend the routes' queues live on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqs {
        region: Option<String>,
    },
    /// Kinesis streams, carried over as Kafka topics.
    Kafka,
}

/// One queue (or topic) a route sends to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePlan {
    /// Where it was defined: `resources.Resources.MyQueue`.
    pub source: Option<String>,
    pub max_receive_count: Option<u32>,
    pub visibility_timeout_secs: Option<u64>,
    pub retention_secs: Option<u64>,
    /// `MaximumMessageSize`.
    pub max_message_bytes: Option<u64>,
    /// The DLQ's name, when the source names one.
    pub dlq: Option<String>,
    /// Kinesis `ShardCount`.
    pub partitions: Option<u32>,
}

/// Where a key comes from: a header or a JSON pointer into the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlan {
    Header(String),
    JsonPointer(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsPlan {
    pub origins: Vec<String>,
    pub credentials: bool,
    /// Request headers a browser may send; empty: Spillway's default.
    pub headers: Vec<String>,
    pub max_age_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessPlan {
    pub status: u16,
    /// The body, with `${id}` for the message id; `None`: Spillway's.
    pub body: Option<String>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Where it was defined: `custom.apiGatewayServiceProxies[0].sqs`.
    pub source: String,
    pub path: String,
    pub methods: Vec<String>,
    pub queue: String,
    pub cors: Option<CorsPlan>,
    pub forward_headers: Vec<String>,
    /// The content types the request templates cover (API Gateway refuses
    /// others with 415 when a template is set); empty: any.
    pub content_types: Vec<String>,
    pub require_api_key: bool,
    pub success: Option<SuccessPlan>,
    pub ordering_key: Option<KeyPlan>,
    pub dedup_key: Option<KeyPlan>,
    /// API Gateway sent the request body alone as the message.
    pub body_alone: bool,
}

impl RoutePlan {
    /// A route with nothing but where it comes from, its path, methods and
    /// queue; API Gateway's 200 as its success status, as the proxy
    /// integrations answered.
    pub fn new(source: &str, path: String, methods: Vec<String>, queue: String) -> Self {
        Self {
            source: source.to_owned(),
            path,
            methods,
            queue,
            cors: None,
            forward_headers: Vec::new(),
            content_types: Vec::new(),
            require_api_key: false,
            success: Some(SuccessPlan { status: 200, body: None }),
            ordering_key: None,
            dedup_key: None,
            body_alone: false,
        }
    }
}

/// API keys: the header and the names of the keys (never their values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeysPlan {
    pub header: String,
    pub names: Vec<String>,
}

/// A usage plan's throttle: each API key's rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottlePlan {
    pub rate: f64,
    pub burst: u64,
}

/// Everything an import carries over.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What the input was: `serverless.yml (…)`, `an API Gateway export`.
    pub source: String,
    pub backend: Backend,
    pub queues: BTreeMap<String, QueuePlan>,
    pub routes: Vec<RoutePlan>,
    pub api_keys: Option<ApiKeysPlan>,
    pub throttle: Option<ThrottlePlan>,
}

impl Plan {
    pub fn new(source: impl Into<String>, backend: Backend) -> Self {
        Self {
            source: source.into(),
            backend,
            queues: BTreeMap::new(),
            routes: Vec::new(),
            api_keys: None,
            throttle: None,
        }
    }

    /// Adds `route`, or its methods to the earlier route of the same path
    /// when everything else is the same (API Gateway lists a method per
    /// entry; Spillway a route per path). Another queue or other settings
    /// on the same path cannot be carried: said in `report`.
    pub fn add_route(&mut self, route: RoutePlan, report: &mut Report) {
        let Some(same) = self.routes.iter_mut().find(|r| r.path == route.path) else {
            self.routes.push(route);
            return;
        };
        let mut other = route.clone();
        other.methods = same.methods.clone();
        other.source = same.source.clone();
        if other == *same {
            same.methods.extend(route.methods);
            same.source = format!("{} and {}", same.source, route.source);
        } else {
            report.not_carried(
                &route.source,
                format!("`{}` is also an earlier route's path, with another queue or settings: Spillway has one route per path", route.path),
            );
        }
    }
}

/// API Gateway's path (`/a/{id}`, `/files/{proxy+}`) as a Spillway path
/// (`/a/{id}`, `/files/{*proxy}`).
pub fn path(p: &str) -> String {
    let p = if p.starts_with('/') { p.to_owned() } else { format!("/{p}") };
    p.split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix("+}")) {
            Some(name) => format!("{{*{name}}}"),
            None => seg.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn greedy_parameters_become_catch_alls() {
        assert_eq!(super::path("my/path"), "/my/path");
        assert_eq!(super::path("/v1/{tenant}/files/{proxy+}"), "/v1/{tenant}/files/{*proxy}");
    }
}
