//! What Spillway costs on SQS: every request it makes, counted by operation
//! in `spillway_sqs_requests_total{op}`. AWS bills SQS by request (each
//! 64 KiB of payload counts as one), so this counter times the price is the
//! bill; retries are requests too, and are counted.

use aws_sdk_sqs::{
    config::{interceptors::BeforeTransmitInterceptorContextRef, ConfigBag, Intercept, RuntimeComponents},
    error::BoxError,
};

/// Counts each request (each attempt, retries included) as it is sent.
#[derive(Debug)]
pub(crate) struct CountRequests;

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "spillway::CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The JSON protocol names the operation in `X-Amz-Target`
        // (`AmazonSQS.SendMessageBatch`).
        let target = context.request().headers().get("x-amz-target").unwrap_or("AmazonSQS.Unknown");
        let op = target.rsplit('.').next().unwrap_or(target).to_owned();
        metrics::counter!("spillway_sqs_requests_total", "op" => op).increment(1);
        Ok(())
    }
}
