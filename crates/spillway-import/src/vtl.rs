//! API Gateway's Velocity templates: the common shapes recognised, nothing
//! interpreted.
//!
//! A template is split into directives (`#set(…)`, `#if(…)`, `#elseif(…)`,
//! `#else`, `#end`) and text, then matched against the shapes migrations
//! meet: the SQS request (`Action=SendMessage&MessageBody=$input.body`,
//! `$util.urlEncode(…)`, a group or deduplication id from the body or a
//! header, message attributes from headers) and the response that reflects
//! the request's `Origin` when it matches a list. Whatever else a template
//! holds is returned as unrecognised, for the report: a template is never
//! guessed at.

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// `#set(…)`, `#if(…)`, `#elseif(…)`: the name and what is in the parentheses.
    Directive(String, String),
    /// `#else`, `#end`.
    Bare(String),
    Text(String),
}

/// Splits `t` into pieces; `##` comments (which also join lines) are dropped.
fn pieces(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if t[i..].starts_with("##") {
            // A line comment: up to and with the end of the line.
            i = t[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            continue;
        }
        if b[i] == b'#' {
            let rest = &t[i + 1..];
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            if matches!(name.as_str(), "set" | "if" | "elseif" | "foreach") {
                let after = &rest[name.len()..];
                let open = after.len() - after.trim_start().len();
                if after.trim_start().starts_with('(') {
                    let start = i + 1 + name.len() + open;
                    let end = close_paren(t, start).ok_or_else(|| format!("`#{name}(` is never closed"))?;
                    flush(&mut text, &mut out);
                    out.push(Piece::Directive(name, t[start + 1..end].trim().to_owned()));
                    i = end + 1;
                    continue;
                }
            }
            if matches!(name.as_str(), "else" | "end") {
                flush(&mut text, &mut out);
                out.push(Piece::Bare(name.clone()));
                i += 1 + name.len();
                continue;
            }
            if !name.is_empty() {
                return Err(format!("`#{name}` is a directive this tool does not read"));
            }
        }
        let c = t[i..].chars().next().unwrap_or(' ');
        text.push(c);
        i += c.len_utf8();
    }
    flush(&mut text, &mut out);
    Ok(out)
}

fn flush(text: &mut String, out: &mut Vec<Piece>) {
    if !text.trim().is_empty() {
        out.push(Piece::Text(text.trim().to_owned()));
    }
    text.clear();
}

/// The index of the `)` closing the `(` at `open`, skipping quoted strings.
fn close_paren(t: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, c) in t[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Where a value in a template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The request body, as received.
    Body,
    /// A request header.
    Header(String),
    /// A JSON pointer into the body (`/event/id`).
    Pointer(String),
    /// A literal.
    Literal(String),
}

/// Reads one expression: `$util.urlEncode(x)` is `x`; `$input.params("H")`
/// and `$input.params().header.get("H")` a header; `$body.a.b` (with
/// `$body` parsed from the body) and `$input.path('$.a.b')` pointers.
fn expr(e: &str, parsed: &[String]) -> Option<Source> {
    let e = e.trim();
    let e = e.strip_prefix("$!").map(|r| format!("${r}")).unwrap_or_else(|| e.to_owned());
    let e = e.strip_prefix("${").and_then(|r| r.strip_suffix('}')).map(|r| format!("${r}")).unwrap_or(e);
    if let Some(inner) = e.strip_prefix("$util.urlEncode(").and_then(|r| r.strip_suffix(')')) {
        return expr(inner, parsed);
    }
    if e == "$input.body" {
        return Some(Source::Body);
    }
    for prefix in ["$input.params().header.get(", "$input.params(", "$method.request.header."] {
        if let Some(inner) = e.strip_prefix(prefix) {
            let name = inner.strip_suffix(')').unwrap_or(inner);
            return literal(name)
                .or_else(|| (prefix.ends_with('.')).then(|| name.to_owned()))
                .map(Source::Header);
        }
    }
    if let Some(inner) = e.strip_prefix("$input.path(").and_then(|r| r.strip_suffix(')')) {
        let path = literal(inner)?;
        let path = path.strip_prefix("$.")?;
        return pointer(path);
    }
    if let Some(rest) = e.strip_prefix('$') {
        let (var, path) = rest.split_once('.')?;
        if parsed.iter().any(|p| p == var) {
            return pointer(path);
        }
        return None;
    }
    literal(&e)
        .or_else(|| e.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)).then(|| e.clone()))
        .map(Source::Literal)
}

/// `"x"` or `'x'` → `x`.
fn literal(s: &str) -> Option<String> {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            if !inner.contains(q) && !inner.contains('$') {
                return Some(inner.to_owned());
            }
        }
    }
    None
}

/// `a.b.c` → `/a/b/c` (names only: no indexes, no functions).
fn pointer(path: &str) -> Option<Source> {
    let ok = path
        .split('.')
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    ok.then(|| Source::Pointer(format!("/{}", path.replace('.', "/"))))
}

/// `#set($name = $util.parseJson($input.body))`: the variable name.
fn parse_json_var(set: &str) -> Option<String> {
    let (lhs, rhs) = set.split_once('=')?;
    let var = lhs.trim().strip_prefix('$')?;
    let rhs: String = rhs.chars().filter(|c| !c.is_whitespace()).collect();
    (rhs == "$util.parseJson($input.body)").then(|| var.to_owned())
}

/// What an SQS request template does, in Spillway's terms.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SqsRequest {
    /// `MessageBody` is the request body as received.
    pub body_alone: bool,
    /// `MessageGroupId` from the body or a header.
    pub group_id: Option<Source>,
    /// `MessageDeduplicationId` from the body or a header.
    pub dedup_id: Option<Source>,
    /// Message attributes: (attribute name, where its value comes from).
    pub attributes: Vec<(String, Source)>,
    /// Parts not recognised, verbatim, for the report.
    pub unrecognised: Vec<String>,
}

/// Reads an SQS request template (`Action=SendMessage&MessageBody=…`).
pub fn sqs_request(t: &str) -> SqsRequest {
    let mut out = SqsRequest::default();
    let ps = match pieces(t) {
        Ok(ps) => ps,
        Err(e) => {
            out.unrecognised.push(e);
            return out;
        }
    };
    let mut parsed = Vec::new();
    let mut form = String::new();
    for p in ps {
        match p {
            Piece::Directive(name, args) if name == "set" => match parse_json_var(&args) {
                Some(var) => parsed.push(var),
                None => out.unrecognised.push(format!("#set({args})")),
            },
            Piece::Text(text) => form.push_str(&text.split_whitespace().collect::<String>()),
            Piece::Directive(name, args) => out.unrecognised.push(format!("#{name}({args})")),
            Piece::Bare(name) => out.unrecognised.push(format!("#{name}")),
        }
    }
    let mut attrs: std::collections::BTreeMap<String, (Option<String>, Option<Source>)> = Default::default();
    for param in form.split('&').filter(|p| !p.is_empty()) {
        let Some((k, v)) = param.split_once('=') else {
            out.unrecognised.push(param.to_owned());
            continue;
        };
        let source = expr(v, &parsed);
        match (k, source) {
            ("Action", Some(Source::Literal(a))) if a == "SendMessage" => {}
            ("MessageBody", Some(Source::Body)) => out.body_alone = true,
            ("MessageGroupId", Some(s @ (Source::Header(_) | Source::Pointer(_)))) => out.group_id = Some(s),
            ("MessageDeduplicationId", Some(s @ (Source::Header(_) | Source::Pointer(_)))) => {
                out.dedup_id = Some(s)
            }
            ("QueueUrl", _) => {}
            (k, source) => match k.strip_prefix("MessageAttribute.").and_then(|r| r.split_once('.')) {
                Some((n, "Name")) => match source {
                    Some(Source::Literal(name)) => attrs.entry(n.to_owned()).or_default().0 = Some(name),
                    _ => out.unrecognised.push(param.to_owned()),
                },
                Some((n, "Value.StringValue")) => match source {
                    Some(s @ Source::Header(_)) => attrs.entry(n.to_owned()).or_default().1 = Some(s),
                    _ => out.unrecognised.push(param.to_owned()),
                },
                Some((_, "Value.DataType")) if matches!(source, Some(Source::Literal(ref t)) if t == "String") =>
                    {}
                _ => out.unrecognised.push(param.to_owned()),
            },
        }
    }
    for (n, (name, source)) in attrs {
        match (name, source) {
            (Some(name), Some(source)) => out.attributes.push((name, source)),
            _ => {
                out.unrecognised.push(format!("MessageAttribute.{n} without both a name and a header value"))
            }
        }
    }
    if !out.body_alone {
        out.unrecognised.push("no `MessageBody=$input.body`: the message is not the request body".to_owned());
    }
    out
}

/// One test of the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `$origin.matches("…")`.
    Regex(String),
    /// `$origin == "…"`.
    Exact(String),
}

/// A response template that reflects the request's `Origin`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Set when the template sets `Access-Control-Allow-Origin` to the
    /// request's origin.
    pub reflects: bool,
    /// What the origin is tested against, in the template's order.
    pub checks: Vec<Check>,
    /// Whether the reflection has no condition: any origin.
    pub any: bool,
    /// It also sets `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// The text left once the directives are taken out (the body).
    pub body: String,
    /// Parts not recognised, verbatim, for the report.
    pub unrecognised: Vec<String>,
}

const ALLOW_ORIGIN: &str = "$context.responseOverride.header.Access-Control-Allow-Origin";
const ALLOW_CREDENTIALS: &str = "$context.responseOverride.header.Access-Control-Allow-Credentials";

/// Reads a response template.
pub fn response(t: &str) -> Response {
    let mut out = Response::default();
    let ps = match pieces(t) {
        Ok(ps) => ps,
        Err(e) => {
            out.unrecognised.push(e);
            return out;
        }
    };
    // Variables that hold the request's origin.
    let mut origin_vars: Vec<String> = Vec::new();
    // The conditions of the `#if`s we are inside.
    let mut conditions: Vec<Option<String>> = Vec::new();
    let mut body = Vec::new();
    for p in ps {
        match p {
            Piece::Directive(name, args) if name == "set" => {
                let Some((lhs, rhs)) = args.split_once('=') else {
                    out.unrecognised.push(format!("#set({args})"));
                    continue;
                };
                let (lhs, rhs) = (lhs.trim(), rhs.trim());
                match expr(rhs, &[]) {
                    Some(Source::Header(h)) if h.eq_ignore_ascii_case("origin") => {
                        if let Some(v) = lhs.strip_prefix('$') {
                            origin_vars.push(v.to_owned());
                        }
                        continue;
                    }
                    _ => {}
                }
                if lhs == ALLOW_ORIGIN && origin_vars.iter().any(|v| rhs.trim_start_matches('$') == v) {
                    out.reflects = true;
                    let conds: Vec<&String> = conditions.iter().flatten().collect();
                    if conds.is_empty() {
                        out.any = true;
                    }
                    for c in conds {
                        if let Err(e) = read_condition(c, &origin_vars, &mut out) {
                            out.unrecognised.push(e);
                        }
                    }
                } else if lhs == ALLOW_CREDENTIALS && literal(rhs).is_some_and(|v| v == "true") {
                    out.credentials = true;
                } else {
                    out.unrecognised.push(format!("#set({args})"));
                }
            }
            Piece::Directive(name, args) if name == "if" => {
                // `#if($origin == "")` only re-reads the header (`origin`).
                let empty_check = origin_vars.iter().any(|v| {
                    let a: String = args.chars().filter(|c| !c.is_whitespace()).collect();
                    a == format!("${v}==\"\"") || a == format!("${v}==''")
                });
                conditions.push((!empty_check).then_some(args));
            }
            Piece::Directive(name, args) => out.unrecognised.push(format!("#{name}({args})")),
            Piece::Bare(name) if name == "end" => {
                if conditions.pop().is_none() {
                    out.unrecognised.push("#end without #if".to_owned());
                }
            }
            Piece::Bare(name) => out.unrecognised.push(format!("#{name}")),
            Piece::Text(text) => {
                if conditions.iter().any(Option::is_some) {
                    out.unrecognised.push(text);
                } else {
                    body.push(text);
                }
            }
        }
    }
    out.body = message_id(&body.join("\n"));
    let rest = out.body.replace("${id}", "");
    if rest.contains('$') || rest.contains('#') {
        out.unrecognised.push(format!("the body `{}` uses template expressions", out.body));
    }
    out
}

/// SQS's message id in a response body (`$input.path('$.SendMessageResponse
/// .SendMessageResult.MessageId')`) becomes Spillway's `${id}`, which a 2xx
/// body replaces with the message's id.
fn message_id(body: &str) -> String {
    let mut out = body.to_owned();
    for q in ['\'', '"'] {
        let path = format!("{q}$.SendMessageResponse.SendMessageResult.MessageId{q}");
        out = out.replace(&format!("$input.json({path})"), "\"${id}\"");
        out = out.replace(&format!("$input.path({path})"), "${id}");
    }
    out
}

/// `$o.matches("re") || $o == "https://x"`: each part into `out`.
fn read_condition(c: &str, vars: &[String], out: &mut Response) -> Result<(), String> {
    for part in c.split("||") {
        let part = part.trim();
        let Some(var) = vars.iter().find(|v| part.starts_with(&format!("${v}"))) else {
            return Err(format!("the condition `{part}` does not test the origin"));
        };
        let rest = part[var.len() + 1..].trim();
        if let Some(arg) = rest.strip_prefix(".matches(").and_then(|r| r.strip_suffix(')')) {
            let re = literal(arg).ok_or_else(|| format!("`{part}`: the regex is not a literal"))?;
            // Velocity strings keep backslashes as written.
            out.checks.push(Check::Regex(re));
        } else if let Some(lit) = rest.strip_prefix("==").and_then(literal) {
            out.checks.push(Check::Exact(lit));
        } else {
            return Err(format!("the condition `{part}` is not `.matches(\"…\")` or `== \"…\"`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_sqs_request_is_the_body_alone() {
        for t in [
            "Action=SendMessage&MessageBody=$input.body",
            "Action=SendMessage&MessageBody=$util.urlEncode($input.body)",
        ] {
            let r = sqs_request(t);
            assert!(r.body_alone && r.unrecognised.is_empty(), "{t}: {r:?}");
        }
    }

    #[test]
    fn group_dedup_and_attributes_come_from_the_body_and_headers() {
        // The shape of the plugin README's FIFO template.
        let t = "#set ($body = $util.parseJson($input.body))\nAction=SendMessage##\n\
                 &MessageGroupId=$util.urlEncode($body.event_type)##\n\
                 &MessageDeduplicationId=$util.urlEncode($body.event.id)##\n\
                 &MessageAttribute.1.Name=$util.urlEncode(\"X-Custom-Signature\")##\n\
                 &MessageAttribute.1.Value.DataType=String##\n\
                 &MessageAttribute.1.Value.StringValue=$util.urlEncode($input.params(\"X-Custom-Signature\"))##\n\
                 &MessageBody=$util.urlEncode($input.body)";
        let r = sqs_request(t);
        assert_eq!(r.unrecognised, Vec::<String>::new());
        assert!(r.body_alone);
        assert_eq!(r.group_id, Some(Source::Pointer("/event_type".into())));
        assert_eq!(r.dedup_id, Some(Source::Pointer("/event/id".into())));
        assert_eq!(
            r.attributes,
            vec![("X-Custom-Signature".into(), Source::Header("X-Custom-Signature".into()))]
        );
    }

    #[test]
    fn anything_else_is_unrecognised_and_never_guessed() {
        let r = sqs_request("Action=SendMessage&MessageBody=$util.base64Encode($input.body)");
        assert!(!r.body_alone);
        assert!(r.unrecognised.iter().any(|u| u.contains("base64Encode")), "{r:?}");
        let r = sqs_request("#foreach($x in $input.path('$.items'))$x#end");
        assert!(!r.unrecognised.is_empty(), "{r:?}");
        let r = sqs_request("Action=SendMessage&MessageBody=$input.body&DelaySeconds=5");
        assert_eq!(r.unrecognised, vec!["DelaySeconds=5".to_owned()]);
    }

    #[test]
    fn the_origin_reflection_snippet_is_read() {
        let t = r#"#set($origin = $input.params("Origin"))
#if($origin == "") #set($origin = $input.params("origin")) #end
#if($origin.matches("https://([a-z0-9-]+\.)+test\.com") || $origin == "https://test.com")
#set($context.responseOverride.header.Access-Control-Allow-Origin = $origin)
#set($context.responseOverride.header.Access-Control-Allow-Credentials = "true")
#end
{"message": "accepted"}"#;
        let r = response(t);
        assert_eq!(r.unrecognised, Vec::<String>::new());
        assert!(r.reflects && !r.any && r.credentials);
        assert_eq!(
            r.checks,
            vec![
                Check::Regex(r"https://([a-z0-9-]+\.)+test\.com".into()),
                Check::Exact("https://test.com".into())
            ]
        );
        assert_eq!(r.body, r#"{"message": "accepted"}"#);
    }

    #[test]
    fn an_unconditional_reflection_is_any_origin() {
        let t = "#set($o = $input.params().header.get('Origin'))\n\
                 #set($context.responseOverride.header.Access-Control-Allow-Origin = $o)\n{}";
        let r = response(t);
        assert!(r.reflects && r.any, "{r:?}");
        let r = response("{\"id\": \"$input.path('$.SendMessageResponse.SendMessageResult.MessageId')\"}");
        assert!(!r.reflects && r.unrecognised.is_empty(), "{r:?}");
        assert_eq!(r.body, r#"{"id": "${id}"}"#);
        let r = response("{\"request\": \"$context.requestId\"}");
        assert!(!r.unrecognised.is_empty(), "{r:?}");
    }
}
