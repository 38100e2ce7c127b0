//! What an import could not carry over, and what will behave differently.
//!
//! The report is the other half of the output: a `spillway.toml` that
//! `config check` accepts is only safe to deploy when the operator has read
//! what it leaves out. Every finding names the place in the source file it
//! comes from, so it can be looked up.

use std::fmt;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Something in the source that has no counterpart in the output: the
    /// operator must decide what to do about it.
    NotCarried,
    /// Carried over, but Spillway behaves differently from API Gateway.
    Differs,
    /// Carried over as is; said so the operator knows where it went.
    Note,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::NotCarried => "not carried",
            Kind::Differs => "differs",
            Kind::Note => "note",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    /// Where in the source: `custom.apiGatewayServiceProxies[0].sqs.cors`.
    pub place: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.kind.label(), self.place, self.message)
    }
}

/// The findings of one import, in the order they were made.
#[derive(Debug, Default)]
pub struct Report {
    findings: Vec<Finding>,
}

impl Report {
    pub fn not_carried(&mut self, place: impl Into<String>, message: impl Into<String>) {
        self.push(Kind::NotCarried, place, message);
    }

    pub fn differs(&mut self, place: impl Into<String>, message: impl Into<String>) {
        self.push(Kind::Differs, place, message);
    }

    pub fn note(&mut self, place: impl Into<String>, message: impl Into<String>) {
        self.push(Kind::Note, place, message);
    }

    fn push(&mut self, kind: Kind, place: impl Into<String>, message: impl Into<String>) {
        let f = Finding { kind, place: place.into(), message: message.into() };
        if !self.findings.contains(&f) {
            self.findings.push(f);
        }
    }

    /// Not carried first, then differences, then notes; each in source order.
    pub fn into_findings(mut self) -> Vec<Finding> {
        self.findings.sort_by_key(|f| f.kind);
        self.findings
    }
}
