//! Imports of the fixtures: the seed's own setup (as a serverless.yml and as
//! an API Gateway export), the plugin README's examples, and broken or
//! unsupported inputs. Each output is compiled with the gateway's own
//! ingest settings; `tests/tests/import.rs` runs `config check` on it and
//! the seed's end to end.

use crate::{import, plan::KeyPlan, report::Kind, ImportError, Imported, Options};

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn seed_serverless() -> String {
    let path = format!("{}/../../docs/examples/seed-serverless.yml", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The output's `[ingest]` compiled as `serve` would (API key files
/// replaced by one that exists).
fn compiles(out: &Imported) -> toml::Value {
    let mut doc: toml::Value = toml::from_str(&out.toml).unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
    let keys = tempfile_with("0123456789abcdef0123\n");
    if let Some(k) = doc.get_mut("ingest").and_then(|i| i.get_mut("api_keys")).and_then(|k| k.as_table_mut())
    {
        k.insert("files".into(), toml::Value::Array(vec![toml::Value::String(keys.clone())]));
    }
    let ingest: spillway_ingest::IngestConfig = doc
        .get("ingest")
        .cloned()
        .unwrap_or(toml::Value::Table(Default::default()))
        .try_into()
        .expect("ingest");
    ingest.compile().unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
    let _ = std::fs::remove_file(keys);
    doc
}

fn tempfile_with(text: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "spillway-import-keys-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("keys file");
    path.display().to_string()
}

fn findings(out: &Imported, kind: Kind) -> Vec<String> {
    out.findings.iter().filter(|f| f.kind == kind).map(ToString::to_string).collect()
}

fn has(list: &[String], what: &str) -> bool {
    list.iter().any(|l| l.contains(what))
}

#[test]
fn the_seed_serverless_file_becomes_the_seed_configuration() {
    let out = import("serverless.yml", &seed_serverless(), &Options::default()).expect("import");
    let doc = compiles(&out);
    assert_eq!(doc["queue"]["backend"].as_str(), Some("sqs"));
    assert_eq!(doc["queue"]["region"].as_str(), Some("us-east-1"));
    let dl = &doc["queues"]["my-queue"]["dead_letter"];
    assert_eq!(dl["max_receive_count"].as_integer(), Some(5));
    assert_eq!(dl["visibility_timeout"].as_str(), Some("30s"));
    let cors = &doc["ingest"]["cors"];
    let origins: Vec<&str> =
        cors["allowed_origins"].as_array().expect("origins").iter().filter_map(|o| o.as_str()).collect();
    assert_eq!(origins, ["https://*.test.com", "https://*.other.test", "https://test.com"]);
    assert_eq!(cors["allow_credentials"].as_bool(), Some(true));
    let route = &doc["ingest"]["routes"][0];
    assert_eq!(route["path"].as_str(), Some("/my/path"));
    assert_eq!(route["queue"].as_str(), Some("my-queue"));
    assert_eq!(route["methods"].as_array().map(|m| m.len()), Some(1));
    assert_eq!(route["methods"][0].as_str(), Some("PUT"));
    // The template's body, with SQS's message id as Spillway's.
    assert_eq!(route["success"]["status"].as_integer(), Some(200));
    assert_eq!(route["success"]["body"].as_str(), Some(r#"{"id": "${id}", "status": "accepted"}"#));
    assert_eq!(doc["consumer"]["queue"].as_str(), Some("my-queue"));
    // Nothing is left out but the error bodies.
    let not = findings(&out, Kind::NotCarried);
    assert!(not.is_empty(), "{not:#?}");
    let differs = findings(&out, Kind::Differs);
    assert!(has(&differs, "[1]") && has(&differs, "JSON body"), "the 400 template: {differs:#?}");
    assert!(out.toml.contains("# format = \"raw\""), "the raw option is offered: {}", out.toml);
}

#[test]
fn the_seed_export_becomes_the_seed_configuration_with_a_key_and_a_usage_plan() {
    let options = Options { usage_plans: Some(fixture("usage-plans.json")) };
    let out = import("export.json", &fixture("seed-export-oas30.json"), &options).expect("import");
    let doc = compiles(&out);
    assert_eq!(doc["queue"]["region"].as_str(), Some("us-east-1"));
    let cors = &doc["ingest"]["cors"];
    let origins: Vec<&str> =
        cors["allowed_origins"].as_array().expect("origins").iter().filter_map(|o| o.as_str()).collect();
    assert_eq!(origins, ["https://*.test.com", "https://*.other.test", "https://test.com"]);
    assert_eq!(cors["allow_credentials"].as_bool(), Some(true));
    let headers: Vec<&str> =
        cors["allowed_headers"].as_array().expect("headers").iter().filter_map(|o| o.as_str()).collect();
    assert_eq!(headers, ["content-type", "authorization", "x-api-key"]);
    let route = &doc["ingest"]["routes"][0];
    assert_eq!(route["methods"][0].as_str(), Some("PUT"));
    assert_eq!(route["require_api_key"].as_bool(), Some(true));
    assert_eq!(route["content_types"][0].as_str(), Some("application/json"));
    assert_eq!(doc["ingest"]["api_keys"]["header"].as_str(), Some("x-api-key"));
    // The key values are never inline: a file reference.
    assert!(doc["ingest"]["api_keys"].get("keys").is_none());
    let per_key = &doc["ingest"]["throttle"]["per_key"];
    assert_eq!((per_key["rate"].as_integer(), per_key["burst"].as_integer()), (Some(20), Some(50)));
    let not = findings(&out, Kind::NotCarried);
    // The mock GET, the quota, and the queue's policy the export cannot say.
    assert!(has(&not, "paths./health.get"), "{not:#?}");
    assert!(has(&not, "quota"), "{not:#?}");
    assert!(has(&not, "RedrivePolicy"), "{not:#?}");
    assert_eq!(not.len(), 3, "{not:#?}");
}

#[test]
fn a_swagger_2_yaml_export_with_the_action_uri_is_read() {
    let out =
        import("export.yaml", &fixture("orders-export-swagger2.yaml"), &Options::default()).expect("import");
    let doc = compiles(&out);
    assert_eq!(doc["queue"]["region"].as_str(), Some("eu-central-1"));
    let route = &doc["ingest"]["routes"][0];
    assert_eq!(route["path"].as_str(), Some("/orders/{tenant}"));
    assert_eq!(route["queue"].as_str(), Some("orders.fifo"));
    assert_eq!(route["ordering_key"]["header"].as_str(), Some("x-customer"));
    assert_eq!(route["success"]["status"].as_integer(), Some(202));
    let cors = &doc["ingest"]["cors"];
    assert_eq!(cors["allowed_origins"][0].as_str(), Some("*"));
    assert_eq!(cors["max_age"].as_str(), Some("600s"));
    assert_eq!(cors["allowed_headers"][1].as_str(), Some("x-customer"));
    assert_eq!(out.plan.routes.len(), 1);
    let not = findings(&out, Kind::NotCarried);
    assert!(has(&not, "/orders/{tenant}/cancel.post") && has(&not, "aws_proxy"), "{not:#?}");
    assert!(has(&not, "securitySchemes.orders-authorizer") && has(&not, "OPEN"), "{not:#?}");
    assert!(has(&findings(&out, Kind::Differs), "`/prod`"), "the stage");
}

#[test]
fn the_plugin_readme_examples_are_each_carried_or_reported() {
    let out = import("serverless.yml", &fixture("plugin-readme.yml"), &Options::default()).expect("import");
    let doc = compiles(&out);
    let routes = doc["ingest"]["routes"].as_array().expect("routes");
    let paths: Vec<&str> = routes.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(
        paths,
        ["/sqs", "/queue", "/custom-header", "/responses", "/{version}/event/receiver", "/private"]
    );
    let by_path = |p: &str| routes.iter().find(|r| r["path"].as_str() == Some(p)).expect(p);
    // `cors: true` is any origin without credentials.
    assert_eq!(by_path("/sqs")["cors"]["allowed_origins"][0].as_str(), Some("*"));
    // A header as a message attribute is forwarded.
    assert_eq!(by_path("/custom-header")["forward_headers"][0].as_str(), Some("custom-header"));
    // The simplified success template is the success body.
    assert_eq!(by_path("/responses")["success"]["body"].as_str(), Some(r#"{ "message": "accepted" }"#));
    // The FIFO template: group and dedup ids from the body, a header.
    let fifo = by_path("/{version}/event/receiver");
    assert_eq!(fifo["queue"].as_str(), Some("events.fifo"));
    assert_eq!(fifo["ordering_key"]["json_pointer"].as_str(), Some("/event_type"));
    assert_eq!(fifo["dedup_key"]["json_pointer"].as_str(), Some("/event_id"));
    assert_eq!(fifo["forward_headers"][0].as_str(), Some("x-custom-signature"));
    // `private: true` requires a key; the others say they do not.
    assert_eq!(by_path("/private")["require_api_key"].as_bool(), Some(true));
    assert_eq!(by_path("/sqs")["require_api_key"].as_bool(), Some(false));
    assert!(out.toml.contains("partner-a, partner-b"), "key names, not values: {}", out.toml);
    assert!(!out.toml.contains("0123456789abcdef0123"), "a key value leaked: {}", out.toml);
    let per_key = &doc["ingest"]["throttle"]["per_key"];
    assert_eq!(per_key["rate"].as_integer(), Some(100));

    let not = findings(&out, Kind::NotCarried);
    for (place, what) in [
        ("[1].sqs.requestParameters", "context.identity.cognitoIdentityId"),
        ("[5].sqs.authorizationType", "OPEN"),
        ("[6].kinesis", "second gateway"),
        ("[7].sns", "SNS is not supported"),
        ("[8].s3", "not supported"),
        ("free.quota", "quotas"),
        ("resources.Resources.MyQueue", "imported as `MyQueue`"),
    ] {
        assert!(
            not.iter()
                .chain(findings(&out, Kind::Differs).iter())
                .any(|f| f.contains(place) && f.contains(what)),
            "{place}: {what}\n{not:#?}"
        );
    }
    let differs = findings(&out, Kind::Differs);
    assert!(has(&differs, "ContentBasedDeduplication"), "{differs:#?}");
}

#[test]
fn kinesis_alone_becomes_kafka_with_what_does_not_map_said() {
    let yml = r#"
service: s
provider: { name: aws }
custom:
  apiGatewayServiceProxies:
    - kinesis:
        path: /kinesis
        method: post
        streamName: { Ref: 'YourStream' }
        partitionKey: { bodyParam: data.myKey }
    - kinesis:
        path: /by-path/{myKey}
        method: post
        streamName: { Ref: 'YourStream' }
        partitionKey: { pathParam: myKey }
resources:
  Resources:
    YourStream: { Type: AWS::Kinesis::Stream, Properties: { ShardCount: 3 } }
"#;
    let out = import("serverless.yml", yml, &Options::default()).expect("import");
    let doc = compiles(&out);
    assert_eq!(doc["queue"]["backend"].as_str(), Some("kafka"));
    assert_eq!(doc["queue"]["partitions"].as_integer(), Some(3));
    assert_eq!(out.plan.routes[0].ordering_key, Some(KeyPlan::JsonPointer("/data/myKey".into())));
    let not = findings(&out, Kind::NotCarried);
    assert!(has(&not, "[1].kinesis.partitionKey"), "{not:#?}");
    assert!(has(&findings(&out, Kind::Differs), "Kafka topic"));
}

#[test]
fn an_origin_regex_that_cannot_be_said_exactly_is_reported_not_widened() {
    let yml = r#"
provider: { name: aws }
custom:
  apiGatewayServiceProxies:
    - sqs:
        path: /e
        method: post
        queueName: events
        response:
          template:
            success: |-
              #set($origin = $input.params("Origin"))
              #if($origin.matches("https://[a-z]+\.test\.com"))
              #set($context.responseOverride.header.Access-Control-Allow-Origin = $origin)
              #set($context.responseOverride.header.Access-Control-Allow-Credentials = "true")
              #end
              {}
"#;
    let out = import("serverless.yml", yml, &Options::default()).expect("import");
    compiles(&out);
    let not = findings(&out, Kind::NotCarried);
    assert!(has(&not, "origin regex not carried"), "{not:#?}");
    let cors = out.plan.routes[0].cors.as_ref().expect("cors");
    assert!(cors.origins.is_empty(), "nothing guessed: {:?}", cors.origins);
}

#[test]
fn broken_and_unsupported_inputs_are_errors_that_say_why() {
    for (text, want) in [
        ("a: [1, 2\nb: c", "not YAML or JSON"),
        ("- just\n- a list\n", "not a mapping"),
        ("name: something\n", "neither a serverless.yml"),
        ("provider: { name: aws }\n", "no `custom.apiGatewayServiceProxies`"),
        (
            "provider: {}\ncustom: { apiGatewayServiceProxies: [ { sns: { path: /a, topicName: t } } ] }\n",
            "no route could be carried",
        ),
        ("provider: {}\ncustom: { apiGatewayServiceProxies: [ 5 ] }\n", "one `kind: {…}` object"),
        (r#"{"openapi": "3.0.1", "paths": {"/a": {"post": {}}}}"#, "API Gateway extensions"),
        (r#"{"swagger": "2.0"}"#, "no `paths`"),
        (
            r#"{"openapi": "3.0.1", "paths": {"/a": {"post": {"x-amazon-apigateway-integration": {"type": "aws_proxy", "uri": "arn:aws:apigateway:us-east-1:lambda:path/f"}}}}}"#,
            "no route could be carried",
        ),
    ] {
        let err = import("in.yml", text, &Options::default()).expect_err(text);
        assert!(err.to_string().contains(want), "{text}: {err}");
        assert!(matches!(err, ImportError::Parse { .. } | ImportError::Unsupported { .. }));
    }
}

#[test]
fn entries_of_one_path_merge_their_methods_and_another_queue_there_is_reported() {
    let yml = r#"
provider: { name: aws }
custom:
  apiGatewayServiceProxies:
    - sqs: { path: /e, method: post, queueName: events }
    - sqs: { path: /e, method: put, queueName: events }
    - sqs: { path: /e, method: patch, queueName: other }
"#;
    let out = import("serverless.yml", yml, &Options::default()).expect("import");
    compiles(&out);
    assert_eq!(out.plan.routes.len(), 1);
    assert_eq!(out.plan.routes[0].methods, ["POST", "PUT"]);
    let not = findings(&out, Kind::NotCarried);
    assert!(has(&not, "[2].sqs") && has(&not, "one route per path"), "{not:#?}");
}
